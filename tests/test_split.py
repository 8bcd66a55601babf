"""The held-out split of a corpus whose metadata names voices and phrasings."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from intentd_train import data
from intentd_train.settings import TrainConfig

LABELS = 4
PHRASINGS_PER_LABEL = 10
SMALL_VOICES = tuple(f"en-us+v{i}" for i in range(30))
BIG_VOICE = "flite:slt"  # speaks 8 of every 38 clips, 21 %
BIG_VOICE_CLIPS = 8


def _corpus() -> Dataset:
    rows: dict[str, list] = {"label": [], "phrasing_id": [], "voice": []}
    for label in range(LABELS):
        for p in range(PHRASINGS_PER_LABEL):
            for voice in SMALL_VOICES + (BIG_VOICE,) * BIG_VOICE_CLIPS:
                rows["label"].append(label)
                rows["phrasing_id"].append(f"p{p}")
                rows["voice"].append(voice)
    return Dataset.from_dict(rows)


def _split(seed: int, test_fraction: float = 0.1) -> data.Split:
    config = TrainConfig(
        output_dir=Path("unused"), data_dir=Path("unused"), seed=seed, test_fraction=test_fraction
    )
    return data.split(_corpus(), "label", config)


def _pairs(ds: Dataset) -> tuple[set[str], set[str]]:
    return set(ds["voice"]), {f"{lab}/{p}" for lab, p in zip(ds["label"], ds["phrasing_id"], strict=True)}


def test_held_out_clips_share_neither_voice_nor_phrasing_with_training() -> None:
    for seed in range(5):
        parts = _split(seed)
        train_voices, train_phrasings = _pairs(parts.train)
        test_voices, test_phrasings = _pairs(parts.test)
        assert len(parts.test) > 0
        assert not train_voices & test_voices
        assert not train_phrasings & test_phrasings
        # An espeak-ng voice is named by its variant: the timbre, under whatever accent.
        assert sorted(v.split("+")[-1] for v in test_voices) == parts.definition["test_voices"]
        assert len(test_voices) == round(0.1 * (len(SMALL_VOICES) + 1))


def test_a_voice_larger_than_the_test_fraction_always_trains() -> None:
    # Each draw of 3 of 31 voices would pick the big one in about 1 seed of 10.
    for seed in range(40):
        parts = _split(seed)
        assert BIG_VOICE not in parts.definition["test_voices"]
        assert BIG_VOICE in set(parts.train["voice"])
    # At a fraction above its share it is an ordinary voice again.
    drawn = {v for seed in range(40) for v in _split(seed, test_fraction=0.3).definition["test_voices"]}
    assert BIG_VOICE in drawn


def test_the_split_is_the_same_for_a_seed() -> None:
    assert _split(7).definition == _split(7).definition
    assert _split(7).definition["test_voices"] != _split(8).definition["test_voices"]
