"""The conv encoder as matmuls: bf16 in torch with the ONNX graph after it (int8 on AMX), or inside
the graph (int8 elsewhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import speech
import torch
from tinymodel import save_tiny_checkpoint
from transformers import AutoModelForAudioClassification

from intentd import encoder, ort
from intentd.errors import ModelError
from intentd.model import Classifier
from intentd.resample import MODEL_RATE_HZ
from intentd.rewrites import cpu_has_amx

WIDE = {"conv_dim": (256,) * 7}  # wide enough for the split (encoder.MIN_CHANNELS)
TEXTS = ("check my balance", "I lost my card, freeze it", "pay my gas bill", "what did I spend last week")


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [speech.convert_rate(speech.say(t), speech.ESPEAK_RATE_HZ, MODEL_RATE_HZ) for t in TEXTS]


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """wav2vec2-base's encoder shape (group norm, no mask), at 256 channels."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("wide"), with_attention_mask=False, **WIDE)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / ort.CACHE_SUBDIR


def _normalised(clip: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((clip - clip.mean()) / np.sqrt(clip.var() + 1e-7))[None]


# group norm (wav2vec2-base) and layer norm, with and without conv biases
@pytest.mark.parametrize(("mask", "bias"), [(False, False), (False, True), (True, True)])
def test_matmul_encoder_matches_the_conv_encoder(
    clips: list[np.ndarray], tmp_path: Path, mask: bool, bias: bool
) -> None:
    model = _trained_like(
        save_tiny_checkpoint(tmp_path / "m", with_attention_mask=mask, conv_bias=bias, **WIDE)
    )
    enc = encoder.MatmulEncoder(model.config, model.state_dict())
    for clip in clips:
        x = _normalised(clip)
        with torch.no_grad():
            want = model.wav2vec2.feature_extractor(x).transpose(1, 2)
        got = enc(x)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert float((got - want).norm() / want.norm()) < 0.02  # bf16 products, fp32 statistics


def _trained_like(path: Path) -> torch.nn.Module:
    """The checkpoint with random encoder norms and biases: a fresh model's are weight 1, bias 0."""
    model = AutoModelForAudioClassification.from_pretrained(str(path)).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.wav2vec2.feature_extractor.named_parameters():
            if "layer_norm" in name or name.endswith("conv.bias"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("layer_norm.weight") else 0.0))
    return model


@pytest.mark.parametrize(("mask", "bias"), [(False, False), (False, True), (True, True)])
def test_graph_encoder_computes_what_the_conv_encoder_computes(
    clips: list[np.ndarray], tmp_path: Path, mask: bool, bias: bool
) -> None:
    model = _trained_like(
        save_tiny_checkpoint(tmp_path / "m", with_attention_mask=mask, conv_bias=bias, **WIDE)
    )
    conv = model.wav2vec2.feature_extractor
    graph = encoder.GraphEncoder(model.config, conv.conv_layers)
    with torch.no_grad():
        for clip in clips:  # four lengths
            x = _normalised(clip)
            torch.testing.assert_close(graph(x), conv(x), rtol=1e-4, atol=1e-4)
        # A batch: each clip normalised over its own frames, as alone.
        a, b = _normalised(clips[0]), _normalised(clips[1][: clips[0].size]) * 5.0
        torch.testing.assert_close(
            graph(torch.cat([a, b])), torch.cat([conv(a), conv(b)]), rtol=1e-4, atol=1e-4
        )


def test_int8_export_runs_the_encoder_as_quantised_matmuls(
    clips: list[np.ndarray], tmp_path: Path, cache: Path
) -> None:
    import onnx

    # Layer norm: the waveform layer's kernels are a plain weight, which int8 must leave in fp32.
    path = save_tiny_checkpoint(tmp_path / "m", with_attention_mask=True, **WIDE)
    fp32 = Classifier(path, device="cpu", top_k=14).classify(clips)
    int8 = Classifier(path, device="cpu", top_k=14, runtime="onnx", precision="int8", bf16_encoder=False)
    assert int8.encoder is None and int8.onnx is not None
    graph = onnx.load(str(int8.onnx.file)).graph
    assert [n.name for n in graph.node if n.op_type == "Conv"] == [
        "/model/wav2vec2/encoder/pos_conv_embed/conv/Conv"
    ]
    weights = {t.name.rsplit(".", 1)[-1] for t in graph.initializer if ".feature_extractor." in t.name}
    assert encoder.WAVEFORM_WEIGHT in weights
    assert {f"weight{i}_quantized" for i in range(1, 7)} <= weights
    for want, got in zip(fp32, int8.classify(clips), strict=True):
        assert abs(want.score - dict(got.top_k)[want.intent]) < 0.05


def test_each_clip_in_a_batch_is_normalised_over_its_own_frames(
    clips: list[np.ndarray], wide_model: Path
) -> None:
    model = AutoModelForAudioClassification.from_pretrained(str(wide_model))
    enc = encoder.MatmulEncoder.load(wide_model, model.config)
    a, b = _normalised(clips[0]), _normalised(clips[1][: clips[0].size]) * 5.0  # a louder second row
    batch = enc(torch.cat([a, b]))
    torch.testing.assert_close(batch[0], enc(a)[0], rtol=0.02, atol=0.02)
    torch.testing.assert_close(batch[1], enc(b)[0], rtol=0.02, atol=0.02)


def test_a_checkpoint_without_the_encoder_is_one_error(wide_model: Path) -> None:
    from transformers import AutoConfig

    with pytest.raises(ModelError, match=r"conv_layers\.0\.conv\.weight"):
        encoder.MatmulEncoder(AutoConfig.from_pretrained(str(wide_model)), {})


def test_supports_wide_wav2vec2_encoders_only(wide_model: Path, tiny_model_nomask: Path) -> None:
    from transformers import AutoConfig

    wide = AutoConfig.from_pretrained(str(wide_model))
    assert encoder.supports(wide)
    assert not encoder.supports(AutoConfig.from_pretrained(str(tiny_model_nomask)))  # 32 channels
    wide.feat_extract_activation = "relu"
    assert not encoder.supports(wide)


def test_features_graph_scores_what_torch_scores(
    clips: list[np.ndarray], wide_model: Path, cache: Path
) -> None:
    model = AutoModelForAudioClassification.from_pretrained(str(wide_model)).eval()
    conv = model.wav2vec2.feature_extractor
    x = _normalised(clips[2])
    with torch.no_grad():
        want = model(x).logits.numpy()
        features = conv(x).transpose(1, 2).contiguous().numpy()
    file = ort.cached_file(wide_model, "fp32", features_in=True)
    assert file.name == "model.features.onnx" and file != ort.cached_file(wide_model, "fp32")
    ort.export(model, file, "fp32", features_in=True)
    graph = ort.OrtModel(file, spin=False)
    assert graph.input_name == "features"
    np.testing.assert_allclose(graph(features), want, atol=1e-4)
    # Fed by the bf16 encoder instead, the scores move by bf16 rounding only.
    got = graph(encoder.MatmulEncoder.load(wide_model, model.config)(x).numpy())
    probs = [torch.softmax(torch.from_numpy(v), -1).numpy() for v in (got, want)]
    assert np.abs(probs[0] - probs[1]).max() < 0.02


@pytest.mark.skipif(not cpu_has_amx(), reason="the split runs on CPUs with AMX only")
def test_int8_onnx_on_amx_runs_the_encoder_in_torch(
    clips: list[np.ndarray], wide_model: Path, cache: Path
) -> None:
    fp32 = Classifier(wide_model, device="cpu", top_k=14).classify(clips)
    split = Classifier(wide_model, device="cpu", top_k=14, runtime="onnx", precision="int8")
    assert split.encoder is not None and split.bf16_encoder
    (file,) = cache.glob("*/model.int8.features.onnx")
    assert split.onnx is not None and split.onnx.file == file
    whole = Classifier(
        wide_model, device="cpu", top_k=14, runtime="onnx", precision="int8", bf16_encoder=False
    )
    assert whole.encoder is None and whole.onnx is not None and whole.onnx.file.name == "model.int8.onnx"
    for want, got in zip(fp32, split.classify(clips), strict=True):
        assert abs(want.score - dict(got.top_k)[want.intent]) < 0.05
