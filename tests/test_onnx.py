"""The ONNX Runtime path: the export scores what torch scores, is cached, and fails in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import speech
from conftest import INTENTD

from intentd import ort
from intentd.config import ModelConfig
from intentd.errors import ConfigError, ModelError
from intentd.model import Classifier
from intentd.resample import MODEL_RATE_HZ

TEXTS = ("check my balance", "I lost my card, freeze it", "pay my gas bill", "what did I spend last week")


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Spoken clips of different lengths at 16 kHz, and one shorter than a second."""
    spoken = [speech.convert_rate(speech.say(t), speech.ESPEAK_RATE_HZ, MODEL_RATE_HZ) for t in TEXTS]
    return [*spoken, spoken[0][: MODEL_RATE_HZ // 2]]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test exports into its own cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / ort.CACHE_SUBDIR


def _scores(predictions: list) -> list[dict[str, float]]:
    return [dict(p.top_k) for p in predictions]


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_model_nomask"])
def test_fp32_export_scores_what_torch_scores_at_every_length(
    fixture: str, clips: list[np.ndarray], request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(fixture)
    torch_scores = _scores(Classifier(path, device="cpu", top_k=14).classify(clips))
    onnx = Classifier(path, device="cpu", top_k=14, runtime="onnx")
    assert onnx.model is None and onnx.onnx is not None  # no torch weights kept
    for want, got in zip(torch_scores, _scores(onnx.classify(clips)), strict=True):
        assert want.keys() == got.keys()
        for label, score in want.items():
            assert got[label] == pytest.approx(score, abs=1e-4)


def test_int8_export_quantises_and_agrees_with_fp32(
    tiny_model_nomask: Path, clips: list[np.ndarray], cache: Path
) -> None:
    fp32 = Classifier(tiny_model_nomask, device="cpu", top_k=14).classify(clips)
    int8 = Classifier(tiny_model_nomask, device="cpu", top_k=14, runtime="onnx", precision="int8")
    (exported,) = cache.glob("*/model.int8.onnx")
    assert b"MatMulInteger" in exported.read_bytes()  # the quantised op, not a renamed fp32 file
    got = int8.classify(clips)
    assert sum(a.intent == b.intent for a, b in zip(fp32, got, strict=True)) >= 0.8 * len(clips)
    for a, b in zip(fp32, got, strict=True):
        assert abs(a.score - dict(b.top_k)[a.intent]) < 0.05


def test_equal_lengths_share_a_pass_and_keep_their_scores(tiny_model: Path, clips: list[np.ndarray]) -> None:
    clf = Classifier(tiny_model, device="cpu", top_k=14, runtime="onnx")
    alone = _scores(clf.classify([clips[1]]))[0]
    for got in _scores(clf.classify([clips[1], clips[0], clips[1]]))[::2]:
        for label, score in alone.items():
            assert got[label] == pytest.approx(score, abs=1e-5)


def test_the_export_is_cached_per_checkpoint(tiny_model: Path, tmp_path: Path, cache: Path) -> None:
    Classifier(tiny_model, device="cpu", runtime="onnx")
    (first,) = cache.glob("*/model.onnx")
    stamp = first.stat().st_mtime_ns
    Classifier(tiny_model, device="cpu", runtime="onnx")
    assert list(cache.glob("*/model.onnx")) == [first] and first.stat().st_mtime_ns == stamp
    # Other weights are another checkpoint: a second export beside the first.
    other = _relabelled(tiny_model, tmp_path / "other", "-renamed")
    renamed = Classifier(other, device="cpu", runtime="onnx")
    assert len(list(cache.glob("*/model.onnx"))) == 2
    assert all(label.endswith("-renamed") for label in renamed.labels)


def _relabelled(model: Path, out: Path, suffix: str) -> Path:
    """A copy of `model` whose labels end in `suffix`: another checkpoint, another export."""
    shutil.copytree(model, out)
    config = json.loads((out / "config.json").read_text())
    config["id2label"] = {k: f"{v}{suffix}" for k, v in config["id2label"].items()}
    config["label2id"] = {f"{k}{suffix}": v for k, v in config["label2id"].items()}
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_the_cache_keeps_the_most_recently_used_exports(
    tiny_model: Path, tmp_path: Path, cache: Path
) -> None:
    models = [_relabelled(tiny_model, tmp_path / f"m{i}", f"-{i}") for i in range(ort.MAX_CACHED_EXPORTS + 1)]
    for model in models[:-1]:
        Classifier(model, device="cpu", runtime="onnx")
    Classifier(models[0], device="cpu", runtime="onnx")  # the oldest export, used again
    Classifier(models[-1], device="cpu", runtime="onnx")  # one export too many
    kept = {ort.cached_file(m, "fp32").parent for m in [models[0], *models[2:]]}
    assert set(cache.iterdir()) == kept  # the least recently used (m1) is gone


def test_a_damaged_cached_export_is_one_clear_error(tiny_model: Path, cache: Path) -> None:
    Classifier(tiny_model, device="cpu", runtime="onnx")
    (exported,) = cache.glob("*/model.onnx")
    exported.write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match=r"cannot be loaded: .*delete it to export again"):
        Classifier(tiny_model, device="cpu", runtime="onnx")


def test_onnx_runs_on_the_cpu_only(tiny_model: Path) -> None:
    with pytest.raises(ModelError, match="runtime onnx runs on the CPU"):
        Classifier(tiny_model, device="cuda", runtime="onnx")
    with pytest.raises(ModelError, match="runtime 'tflite' is not one of torch, onnx"):
        Classifier(tiny_model, device="cpu", runtime="tflite")
    with pytest.raises(ConfigError, match=r"model\.runtime must be torch or onnx"):
        ModelConfig(runtime="tflite")
    with pytest.raises(ConfigError, match=r"model\.runtime onnx runs on the CPU"):
        ModelConfig(runtime="onnx", device="cuda")


def test_classify_cli_gives_the_same_intents_on_both_runtimes(
    tiny_model: Path, clips: list[np.ndarray], tmp_path: Path
) -> None:
    wavs = []
    for i, clip in enumerate(clips):
        wavs.append(tmp_path / f"clip{i}.wav")
        sf.write(wavs[-1], clip, MODEL_RATE_HZ, subtype="PCM_16")
    runs = {}
    for runtime in ("torch", "onnx"):
        cmd = [str(INTENTD), "classify", *map(str, wavs), "--model", str(tiny_model), "--runtime", runtime]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        runs[runtime] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["intent"] for r in runs["onnx"]] == [r["intent"] for r in runs["torch"]]
    assert [r["path"] for r in runs["onnx"]] == list(map(str, wavs))
    for a, b in zip(runs["torch"], runs["onnx"], strict=True):
        assert b["score"] == pytest.approx(a["score"], abs=1e-3)  # JSON rounds the scores
