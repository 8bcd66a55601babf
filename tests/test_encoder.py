"""The conv encoder as bf16 matmuls, and the ONNX graph that starts after it (int8 on AMX)."""

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
    path = save_tiny_checkpoint(tmp_path / "m", with_attention_mask=mask, conv_bias=bias, **WIDE)
    model = AutoModelForAudioClassification.from_pretrained(str(path)).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # trained-like norms: a fresh model's are weight 1, bias 0
        for name, p in model.wav2vec2.feature_extractor.named_parameters():
            if "layer_norm" in name or name.endswith("conv.bias"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("layer_norm.weight") else 0.0))
    enc = encoder.MatmulEncoder(model.config, model.state_dict())
    for clip in clips:
        x = _normalised(clip)
        with torch.no_grad():
            want = model.wav2vec2.feature_extractor(x).transpose(1, 2)
        got = enc(x)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert float((got - want).norm() / want.norm()) < 0.02  # bf16 products, fp32 statistics


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
