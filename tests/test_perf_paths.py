"""Performance paths on CPU: int8 agrees with fp32, length buckets keep input order, cuda selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import speech
import torch

from intentd.config import ModelConfig
from intentd.errors import ConfigError, ModelError
from intentd.model import Classifier, batch_groups, compute_dtype, cpu_has_native_bf16, resolve_device
from intentd.resample import MODEL_RATE_HZ

TEXTS = (
    "check my balance", "I lost my card, freeze it", "pay my gas bill", "new address please",
    "what did I spend last week", "cancel the direct debit", "the app keeps crashing",
    "can I use my card in France", "open a joint account", "how much can I withdraw",
)  # fmt: skip


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Spoken clips of different lengths at 16 kHz."""
    return [speech.convert_rate(speech.say(t), speech.ESPEAK_RATE_HZ, MODEL_RATE_HZ) for t in TEXTS]


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_model_nomask"])
def test_int8_agrees_with_fp32_on_most_clips(
    fixture: str, clips: list[np.ndarray], request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(fixture)
    fp32 = Classifier(path, device="cpu", top_k=14).classify(clips)
    int8_clf = Classifier(path, device="cpu", top_k=14, precision="int8")
    int8 = int8_clf.classify(clips)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in int8_clf.model.modules())
    # On CPUs with native bf16 (this project's machines have AVX512-BF16) the conv layers run in it:
    # the feature encoder and the positional conv.
    base = int8_clf.model.base_model
    conv_dtypes = {
        p.dtype for m in (base.feature_extractor, base.encoder.pos_conv_embed) for p in m.parameters()
    }
    assert conv_dtypes == {torch.bfloat16 if cpu_has_native_bf16() else torch.float32}
    agree = sum(a.intent == b.intent for a, b in zip(fp32, int8, strict=True))
    assert agree >= 0.8 * len(clips)
    for a, b in zip(fp32, int8, strict=True):
        assert abs(a.score - dict(b.top_k)[a.intent]) < 0.05  # scores move little, not just the argmax


def test_int8_batched_equals_one_at_a_time(tiny_model: Path, clips: list[np.ndarray]) -> None:
    clf = Classifier(tiny_model, device="cpu", top_k=14, precision="int8")
    for clip, b in zip(clips, clf.classify(clips), strict=True):
        (single,) = clf.classify([clip])
        got = dict(b.top_k)
        for label, score in single.top_k:
            assert got[label] == pytest.approx(score, abs=2e-2)  # activations are quantised per batch


@pytest.mark.parametrize("mixes_lengths", [True, False])
def test_length_buckets_cover_every_clip_once(mixes_lengths: bool) -> None:
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(1_600, 80_000, size=50)] + [16_000] * 5
    groups = batch_groups(lengths, mixes_lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        ls = [lengths[i] for i in g]
        assert ls == sorted(ls)
        assert max(ls) <= min(ls) * 1.25 if mixes_lengths else len(set(ls)) == 1
    assert any(len(g) == 5 for g in groups)  # equal lengths always share a batch


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_model_nomask"])
def test_bucketed_batch_returns_input_order(
    fixture: str, clips: list[np.ndarray], request: pytest.FixtureRequest
) -> None:
    clf = Classifier(request.getfixturevalue(fixture), device="cpu", top_k=14)
    assert clf.mixes_lengths and not clf.pads_batches  # exact, but padding pays on cuda only
    clf.pads_batches = True
    shuffled = [clips[i] for i in (3, 0, 7, 1, 9, 2, 8, 4, 6, 5)]
    assert len(batch_groups([len(c) for c in shuffled], True)) > 1  # several buckets
    for clip, b in zip(shuffled, clf.classify(shuffled), strict=True):
        (single,) = clf.classify([clip])
        assert b.intent == single.intent and b.score == pytest.approx(single.score, abs=1e-3)


def test_padded_batch_scores_each_clip_as_alone_without_a_mask(
    tmp_path: Path, clips: list[np.ndarray]
) -> None:
    """wav2vec2-base-style checkpoints (group norm, no mask) batch mixed lengths exactly."""
    from tinymodel import save_tiny_checkpoint

    # Larger initial weights than the default give confident scores, which padding visibly moves.
    path = save_tiny_checkpoint(tmp_path, with_attention_mask=False, initializer_range=0.2)
    clf = Classifier(path, device="cpu", top_k=14)
    clf.pads_batches = True  # what cuda does
    group = [c for c in clips if len(c) <= min(map(len, clips)) * 1.25]
    assert len(group) >= 3 and len({len(c) for c in group}) == len(group)
    assert batch_groups([len(c) for c in group], clf.pads_batches) == [
        sorted(range(len(group)), key=lambda i: len(group[i]))
    ]  # one pass for all of them
    batched = clf.classify(group)
    alone = [clf.classify([c])[0] for c in group]
    for b, a in zip(batched, alone, strict=True):
        assert dict(b.top_k) == pytest.approx(dict(a.top_k), abs=1e-5)
    # The same padded batch through the checkpoint's own GroupNorm scores differently: the
    # padding is what the per-clip norm keeps out.
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    model = AutoModelForAudioClassification.from_pretrained(str(path)).eval()
    feats = AutoFeatureExtractor.from_pretrained(str(path))(
        group, sampling_rate=MODEL_RATE_HZ, padding=True, return_attention_mask=True, return_tensors="pt"
    )
    with torch.inference_mode():
        plain = torch.softmax(model(**feats).logits, dim=-1).numpy()
    moved = [
        abs(plain[i] - [dict(a.top_k)[label] for label in clf.labels]).max() for i, a in enumerate(alone)
    ]
    assert max(moved) > 1e-3


def test_weight_norm_is_folded_and_scores_do_not_move(tiny_model: Path, clips: list[np.ndarray]) -> None:
    """The positional conv's weight norm is baked into a plain weight once, with the same scores."""
    from torch.nn.utils import parametrize
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    clf = Classifier(tiny_model, device="cpu", top_k=14)
    plain = AutoModelForAudioClassification.from_pretrained(str(tiny_model)).eval()
    assert any(parametrize.is_parametrized(m) for m in plain.modules())
    assert not any(parametrize.is_parametrized(m) for m in clf.model.modules())
    feats = AutoFeatureExtractor.from_pretrained(str(tiny_model))(
        clips[0], sampling_rate=MODEL_RATE_HZ, return_tensors="pt"
    )
    with torch.inference_mode():
        expected = torch.softmax(plain(**feats).logits, dim=-1)[0].tolist()
    got = dict(clf.classify([clips[0]])[0].top_k)
    assert [got[label] for label in clf.labels] == pytest.approx(expected, abs=1e-6)


def test_cpu_runs_each_length_alone(tiny_model: Path, clips: list[np.ndarray]) -> None:
    """On a CPU, padding is work: clips of different lengths never share a pass; equal ones do."""
    clf = Classifier(tiny_model, device="cpu", top_k=14)
    rows: list[int] = []
    clf.model.register_forward_pre_hook(
        lambda _m, _a, kw: rows.append(kw["input_values"].shape[0]), with_kwargs=True
    )
    batch = [clips[0], clips[1], clips[0], clips[2]]
    got = clf.classify(batch)
    assert sorted(rows) == [1, 1, 2]  # the two copies of clips[0] share one unpadded pass
    assert [g.intent for g in got] == [clf.classify([c])[0].intent for c in batch]


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_model_nomask"])
def test_shape_grid_padding_scores_each_clip_as_alone(
    fixture: str, clips: list[np.ndarray], request: pytest.FixtureRequest
) -> None:
    """cuda pads batches to a length grid and a power-of-two size; the padding logic runs here."""
    clf = Classifier(request.getfixturevalue(fixture), device="cpu", top_k=14)
    assert not clf.pads_to_shapes  # cuda only: on a CPU padding is work
    alone = [clf.classify([c])[0] for c in clips]
    clf.pads_batches = clf.pads_to_shapes = True  # what cuda does
    for group in ([0], [1, 2, 4], [0, 3, 5, 6, 7]):  # 1 row, 3 rows padded to 4, 5 to 8
        got = clf.classify([clips[i] for i in group])
        for i, g in zip(group, got, strict=True):
            assert dict(g.top_k) == pytest.approx(dict(alone[i].top_k), abs=1e-5)


@pytest.mark.parametrize("cudnn", [True, False])
def test_cudnn_choice_leaves_the_process_setting_alone(
    tiny_model: Path, clips: list[np.ndarray], cudnn: bool
) -> None:
    """model.cudnn applies to the model's own passes; torch's global switch is restored after each."""
    before = torch.backends.cudnn.enabled
    clf = Classifier(tiny_model, device="cpu", cudnn=cudnn)
    seen: list[bool] = []
    clf.model.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cudnn.enabled))
    assert clf.classify(clips[:2]) and torch.backends.cudnn.enabled == before
    assert seen and all(s == (before and cudnn) for s in seen)  # the choice holds inside the pass
    torch.backends.cudnn.enabled = False
    try:
        clf.classify(clips[:1])
        assert torch.backends.cudnn.enabled is False
    finally:
        torch.backends.cudnn.enabled = before


def test_cuda_runs_fp16_and_refuses_int8() -> None:
    cuda = torch.device("cuda")  # a device object needs no GPU; selection logic is what is tested
    assert compute_dtype(cuda, "fp32") == torch.float16
    with pytest.raises(ModelError, match="int8 is CPU-only"):
        compute_dtype(cuda, "int8")
    assert compute_dtype(torch.device("cpu"), "int8") == torch.qint8
    with pytest.raises(ModelError, match="precision 'fp16'"):
        compute_dtype(torch.device("cpu"), "fp16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_one_clear_error(tiny_model: Path) -> None:
    with pytest.raises(ModelError, match="no CUDA GPU is available; use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(ModelError, match="no CUDA GPU"):
        Classifier(tiny_model, device="cuda")


def test_precision_is_validated_in_config() -> None:
    assert ModelConfig().precision == "fp32"
    with pytest.raises(ConfigError, match=r"model\.precision must be fp32 or int8"):
        ModelConfig(precision="fp16")
