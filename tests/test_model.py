"""The classifier: batched results equal one-at-a-time results; min_score; load errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import speech
from tinymodel import INTENTS, save_tiny_checkpoint
from transformers import pipeline

from intentd.errors import ModelError
from intentd.model import Classifier, Prediction
from intentd.resample import MODEL_RATE_HZ, change_speed


def _clips() -> list[np.ndarray]:
    texts = ["check my balance", "I lost my card, freeze it", "hello", "I want to pay my gas bill now please"]
    return [speech.convert_rate(speech.say(t), speech.ESPEAK_RATE_HZ, MODEL_RATE_HZ) for t in texts]


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_model_nomask"])
def test_batched_equals_one_at_a_time(fixture: str, request: pytest.FixtureRequest) -> None:
    clf = Classifier(request.getfixturevalue(fixture), device="cpu", top_k=14)
    clips = _clips()
    assert len({len(c) for c in clips}) == len(clips)  # different lengths force padding
    batched = clf.classify(clips)
    for clip, b in zip(clips, batched, strict=True):
        (single,) = clf.classify([clip])
        assert b.intent == single.intent
        got = dict(b.top_k)
        for label, score in single.top_k:
            assert got[label] == pytest.approx(score, abs=1e-3)


def test_agrees_with_hf_pipeline(tiny_model: Path) -> None:
    clf = Classifier(tiny_model, device="cpu", top_k=5)
    pipe = pipeline("audio-classification", model=str(tiny_model), device="cpu")
    for clip, p in zip(_clips(), clf.classify(_clips()), strict=True):
        ref = pipe({"raw": clip, "sampling_rate": MODEL_RATE_HZ}, top_k=5)
        assert p.intent == ref[0]["label"]
        assert p.score == pytest.approx(ref[0]["score"], abs=1e-4)


def test_min_score_gives_unknown_but_keeps_top_k(tiny_model: Path) -> None:
    clf = Classifier(tiny_model, device="cpu", top_k=3, min_score=0.99)
    (p,) = clf.classify(_clips()[:1])
    assert p.intent == "unknown"
    assert len(p.top_k) == 3 and p.top_k[0][0] != "unknown" and p.score == p.top_k[0][1]


def test_missing_folder_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        Classifier(tmp_path / "nope", device="cpu")


def test_pickle_only_checkpoint_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForAudioClassification

    model = AutoModelForAudioClassification.from_pretrained(tiny_model)
    model.save_pretrained(tmp_path, safe_serialization=False)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelError, match="safetensors"):
        Classifier(tmp_path, device="cpu")


@pytest.mark.parametrize("rate", ["8k", 0, 8000.5, True])
def test_a_bad_trained_rate_is_a_model_error(rate: object, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="intentd_trained_rate_hz must be a positive integer"):
        Classifier(save_tiny_checkpoint(tmp_path, intentd_trained_rate_hz=rate), device="cpu")


def test_a_whole_float_trained_rate_is_read_as_an_integer(tmp_path: Path) -> None:
    clf = Classifier(save_tiny_checkpoint(tmp_path, intentd_trained_rate_hz=8000.0), device="cpu")
    assert clf.trained_rate_hz == 8000 and isinstance(clf.trained_rate_hz, int)


def _all_scores(p: Prediction) -> np.ndarray:
    return np.array([dict(p.top_k)[label] for label in INTENTS])


def test_tta_speeds_average_the_scores_at_each_speed(tmp_path: Path) -> None:
    plain = Classifier(save_tiny_checkpoint(tmp_path / "plain"), device="cpu", top_k=14)
    speeds = [0.9, 1.0, 1.1]
    tta = Classifier(
        save_tiny_checkpoint(tmp_path / "tta", intentd_tta_speeds=speeds), device="cpu", top_k=14
    )
    assert tta.tta_speeds == (0.9, 1.0, 1.1)
    clips = _clips()
    for clip, p in zip(clips, tta.classify(clips), strict=True):  # several lengths, in input order
        want = np.mean([_all_scores(plain.classify([change_speed(clip, s)])[0]) for s in speeds], axis=0)
        np.testing.assert_allclose(_all_scores(p), want, atol=1e-6)
        assert p.score == pytest.approx(want.max(), abs=1e-6)
        # A random tiny model's scores sit near 1/14: the speeds move them by ~1e-4.
        assert np.abs(want - _all_scores(plain.classify([clip])[0])).max() > 1e-5


def test_a_tta_speed_of_one_is_the_plain_model(tmp_path: Path) -> None:
    plain = Classifier(save_tiny_checkpoint(tmp_path / "plain"), device="cpu", top_k=14)
    one = Classifier(save_tiny_checkpoint(tmp_path / "one", intentd_tta_speeds=[1]), device="cpu", top_k=14)
    assert plain.tta_speeds == one.tta_speeds == (1.0,)
    for a, b in zip(plain.classify(_clips()), one.classify(_clips()), strict=True):
        assert a.top_k == b.top_k


@pytest.mark.parametrize("speeds", [[], 1.05, ["fast"], [True], [0.5, 1.0]])
def test_bad_tta_speeds_are_a_model_error(speeds: object, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="intentd_tta_speeds must be a non-empty list of speeds"):
        Classifier(save_tiny_checkpoint(tmp_path, intentd_tta_speeds=speeds), device="cpu")
