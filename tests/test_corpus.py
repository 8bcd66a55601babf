"""The espeak-ng + flite corpus: determinism, audiofolder layout, WAV format and the errors a user hits."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
from conftest import INTENTD

from intentd.errors import IntentdError
from intentd.speak import FLITE_PREFIX, FLITE_VOICES, speak
from intentd_train.corpus import (
    CORPUS_RATE_HZ,
    FLITE_SHARE,
    INTENTS,
    METADATA_COLUMNS,
    METADATA_NAME,
    PEAK_LEVEL,
    CorpusConfig,
    CorpusError,
    build_corpus,
    load_corpus,
    load_phrasings,
    plan_corpus,
)

MIN_PHRASINGS_PER_INTENT = 30
SMALL = ("balance", "freeze", "pay_bill")
PCM16_STEP = 2.0 / 2**16


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / METADATA_NAME, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two clips of every intent."""
    out = tmp_path_factory.mktemp("corpus") / "out"
    build_corpus(out, seed=0, per_intent=2, progress=False)
    return out


def test_phrasings_are_many_unique_and_labelled() -> None:
    phrasings = load_phrasings()
    assert tuple(phrasings) == INTENTS
    ids = [p.id for group in phrasings.values() for p in group]
    assert len(ids) == len(set(ids))
    for label, group in phrasings.items():
        assert len(group) >= MIN_PHRASINGS_PER_INTENT, label
        assert all(p.id.startswith(f"{label}-") and p.label == label for p in group)


def test_two_synthesizers_share_the_corpus() -> None:
    voices = [c.voice for c in plan_corpus(CorpusConfig(seed=0))]
    flite = [v for v in voices if v.startswith(FLITE_PREFIX)]
    assert abs(len(flite) / len(voices) - FLITE_SHARE) < 0.03
    assert {v.removeprefix(FLITE_PREFIX) for v in flite} == set(FLITE_VOICES)


def test_flite_voices_speak_and_unknown_ones_are_refused() -> None:
    samples, rate_hz = speak("check my balance", voice=FLITE_PREFIX + "slt", wpm=140)
    assert rate_hz == 16000 and 0.5 < len(samples) / rate_hz < 3.0 and abs(samples).max() > 0.1
    slow, _ = speak("check my balance", voice=FLITE_PREFIX + "slt", wpm=100)
    assert len(slow) > 1.2 * len(samples)
    # flite itself would fall back to its default voice without a word.
    with pytest.raises(IntentdError, match="unknown flite voice 'kal9'"):
        speak("hello", voice=FLITE_PREFIX + "kal9")


def test_layout_and_metadata(corpus: Path) -> None:
    with open(corpus / METADATA_NAME, newline="", encoding="utf-8") as f:
        assert tuple(next(csv.reader(f))) == METADATA_COLUMNS
    rows = _rows(corpus)
    assert {r["label"] for r in rows} == set(INTENTS)
    assert len(rows) == 2 * len(INTENTS)
    wavs = {str(p.relative_to(corpus)) for p in corpus.rglob("*.wav")}
    assert wavs == {r["file_name"] for r in rows}
    for r in rows:
        assert r["file_name"].split("/")[0] == r["label"]
        assert r["phrasing_id"].startswith(r["label"] + "-")
        assert r["text"] and r["voice"].startswith(("en", FLITE_PREFIX))
        assert int(r["rate_wpm"]) > 0 and 0 <= int(r["pitch"]) <= 99


def test_clips_are_8khz_mono_pcm16_speech(corpus: Path) -> None:
    for wav in corpus.rglob("*.wav"):
        info = sf.info(wav)
        assert (info.samplerate, info.channels, info.subtype) == (CORPUS_RATE_HZ, 1, "PCM_16")
        assert info.duration > 0.5  # a sentence, not an empty or truncated clip
        samples, _ = sf.read(wav, dtype="float32")
        # Peak-normalised: never clipped, never near-silent.
        assert abs(abs(samples).max() - PEAK_LEVEL) < PCM16_STEP


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_corpus(a, seed=7, per_intent=2, intents=SMALL, jobs=2, progress=False)
    build_corpus(b, seed=7, per_intent=2, intents=SMALL, jobs=1, progress=False)
    build_corpus(c, seed=8, per_intent=2, intents=SMALL, progress=False)
    files_a = _files(a)
    assert files_a == _files(b)
    assert files_a != _files(c)


def test_an_intent_subset_plans_the_same_clips_as_the_full_corpus() -> None:
    full = plan_corpus(CorpusConfig(seed=3, per_intent=4))
    subset = plan_corpus(CorpusConfig(seed=3, per_intent=4, intents=SMALL))
    assert subset == [clip for clip in full if clip.label in SMALL]


def test_every_phrasing_is_used_before_any_repeats() -> None:
    n = len(load_phrasings(["abroad"])["abroad"])
    clips = plan_corpus(CorpusConfig(per_intent=n, intents=("abroad",)))
    assert len({c.phrasing_id for c in clips}) == n


def test_audiofolder_loads_with_labels(corpus: Path, tmp_path: Path) -> None:
    from datasets import ClassLabel, load_dataset

    # Plain audiofolder: metadata.csv wins over folder names, so `label` is the intent string.
    plain = load_dataset("audiofolder", data_dir=str(corpus), cache_dir=str(tmp_path / "a"))
    train = plain["train"]
    assert set(train.column_names) == {"audio", *METADATA_COLUMNS} - {"file_name"}
    assert sorted(train["label"]) == sorted(r["label"] for r in _rows(corpus))

    ds = load_corpus(corpus, cache_dir=tmp_path / "b")["train"]
    label = ds.features["label"]
    assert isinstance(label, ClassLabel) and tuple(label.names) == INTENTS
    by_text = {r["text"]: r["label"] for r in _rows(corpus)}
    for example in ds:
        assert label.int2str(example["label"]) == by_text[example["text"]]
    first = ds[0]["audio"]
    assert first.get_all_samples().sample_rate == CORPUS_RATE_HZ


def test_non_empty_out_is_refused_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match=r"not empty.*--force"):
        build_corpus(out, per_intent=1, intents=("balance",), progress=False)
    build_corpus(out, per_intent=1, intents=("balance",), force=True, progress=False)
    assert len(_rows(out)) == 1 and (out / "notes.txt").exists()


def test_missing_espeak_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CorpusError, match="espeak-ng not found"):
        build_corpus(tmp_path / "out", per_intent=1, progress=False)


def test_cli_prints_one_error_line_for_a_used_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("x")
    proc = subprocess.run(
        [str(INTENTD), "corpus", str(out), "--per-intent", "1", "--intents", "balance"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "not empty" in proc.stderr


def test_cli_builds_a_corpus(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(INTENTD), "corpus", str(out), "--per-intent", "1", "--intents", "abroad,balance"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote 2 clips" in proc.stdout
    assert {r["label"] for r in _rows(out)} == {"abroad", "balance"}
