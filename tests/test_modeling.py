"""The training-time rewrite of the waveform conv: same numbers, same checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from speech import ESPEAK_RATE_HZ, say

from intentd.resample import resample
from intentd_train import modeling
from intentd_train.settings import TrainConfig

LABELS = [f"intent_{i}" for i in range(4)]


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """Two clips of real speech, the shorter zero-padded, as `[batch, 1, samples]`."""
    a = resample(say("check my balance please"), ESPEAK_RATE_HZ, 16000)
    b = resample(say("freeze my card"), ESPEAK_RATE_HZ, 16000)
    out = np.zeros((2, 1, max(len(a), len(b))), dtype=np.float32)
    out[0, 0, : len(a)] = a
    out[1, 0, : len(b)] = b
    return torch.from_numpy(out)


# The first layers of the `small`/`tiny` sizes and of wav2vec2-base.
@pytest.mark.parametrize(("kernel", "stride", "bias"), [(80, 40, False), (10, 5, True)])
def test_framed_conv_matches_conv1d_forward_and_gradients(
    batch: torch.Tensor, kernel: int, stride: int, bias: bool
) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(1, 32, kernel, stride, bias=bias)
    framed = modeling.FramedConv1d(1, 32, kernel, stride, bias=bias)
    framed.load_state_dict(conv.state_dict())
    want, got = conv(batch), framed(batch)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(want)
    want.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(framed.weight.grad, conv.weight.grad, rtol=1e-4, atol=1e-4)
    if bias:
        torch.testing.assert_close(framed.bias.grad, conv.bias.grad, rtol=1e-4, atol=1e-4)


def test_framed_model_saves_a_plain_checkpoint(batch: torch.Tensor, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForAudioClassification

    config = TrainConfig(output_dir=tmp_path, from_config="tiny", freeze_feature_encoder=False)
    ds = Dataset.from_dict({"label": [0, 1]})
    _, model, _, _ = modeling.build(config, LABELS, ds, "label")
    model.eval()
    with torch.no_grad():
        before = model(batch[:, 0]).logits
    keys = set(model.state_dict())
    assert modeling.frame_waveform_conv(model)
    assert isinstance(model.wav2vec2.feature_extractor.conv_layers[0].conv, modeling.FramedConv1d)
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(batch[:, 0]).logits, before, rtol=1e-4, atol=1e-5)
    assert not modeling.frame_waveform_conv(model)  # already framed: left alone

    model.save_pretrained(str(tmp_path))
    loaded = AutoModelForAudioClassification.from_pretrained(str(tmp_path)).eval()
    assert type(loaded.wav2vec2.feature_extractor.conv_layers[0].conv) is torch.nn.Conv1d
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch[:, 0]).logits, before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("flag", "layer_sum"), [([], True), (["--no-layer-sum"], False)])
def test_layer_sum_flag_picks_what_the_classifier_reads(
    batch: torch.Tensor, tmp_path: Path, flag: list[str], layer_sum: bool
) -> None:
    from datasets import Dataset

    from intentd.cli import build_parser
    from intentd_train.arguments import config_from_args

    argv = ["train", "--data", str(tmp_path), "--from-config", "tiny", "--output", str(tmp_path)]
    config = config_from_args(build_parser().parse_args(argv + flag))
    assert config.layer_sum is layer_sum
    _, model, _, _ = modeling.build(config, LABELS, Dataset.from_dict({"label": [0, 1]}), "label")
    assert model.config.use_weighted_layer_sum is layer_sum
    assert ("layer_weights" in model.state_dict()) is layer_sum
    model.eval()
    with torch.no_grad():
        logits = model(batch[:, 0]).logits
        last = model.wav2vec2(batch[:, 0]).last_hidden_state
        from_last = model.classifier(model.projector(last).mean(1))
    assert logits.shape == (2, len(LABELS))
    # Without the mix, the last layer alone, pooled over its frames, gives the logits.
    assert torch.allclose(logits, from_last, rtol=1e-4, atol=1e-5) is not layer_sum


def test_no_layer_sum_is_refused_for_a_pretrained_checkpoint(tmp_path: Path) -> None:
    from intentd.cli import build_parser
    from intentd.errors import IntentdError
    from intentd_train.arguments import config_from_args

    argv = ["train", "--data", str(tmp_path), "--base-model", str(tmp_path), "--output", str(tmp_path)]
    assert config_from_args(build_parser().parse_args(argv)).layer_sum
    with pytest.raises(IntentdError, match="--no-layer-sum applies to --from-config only"):
        config_from_args(build_parser().parse_args([*argv, "--no-layer-sum"]))


def test_training_computes_no_gradient_for_the_waveform(batch: torch.Tensor, tmp_path: Path) -> None:
    from datasets import Dataset

    config = TrainConfig(output_dir=tmp_path, from_config="tiny", freeze_feature_encoder=False)
    _, model, _, _ = modeling.build(config, LABELS, Dataset.from_dict({"label": [0, 1]}), "label")
    seen: list[torch.Tensor] = []
    first = model.wav2vec2.feature_extractor.conv_layers[0]
    first.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    model.train()
    model(batch[:, 0], labels=torch.tensor([0, 1])).loss.backward()
    assert not seen[0].requires_grad  # transformers would set it, for gradient checkpointing
    assert first.conv.weight.grad is not None and first.conv.weight.grad.abs().sum() > 0
