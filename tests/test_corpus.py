"""The espeak-ng + flite + Pico + Piper corpus: determinism, layout, WAV format and the errors a user hits."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import INTENTD

from intentd.errors import IntentdError
from intentd.speak import (
    FLITE_PREFIX,
    FLITE_VOICES,
    HIBARI_PREFIX,
    PICO_PREFIX,
    PICO_VOICES,
    PIPER_PREFIX,
    PIPER_VOICES,
    speak,
)
from intentd_train.corpus import (
    CORPUS_RATE_HZ,
    FLITE_SHARE,
    METADATA_COLUMNS,
    METADATA_NAME,
    PEAK_LEVEL,
    PICO_MAX_PITCH,
    PICO_MIN_PITCH,
    PICO_SHARE,
    PIPER_SHARE,
    CorpusConfig,
    CorpusError,
    build_corpus,
    load_corpus,
    plan_corpus,
)
from intentd_train.wording import INTENTS, in_corpus, load_phrasings, spoken_core

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


def test_the_spoken_core_drops_openers_closers_case_and_punctuation() -> None:
    assert spoken_core("Hello, I need to make a big payment") == "i need to make a big payment"
    assert spoken_core("I need to make a big payment, thank you") == "i need to make a big payment"
    assert spoken_core("hi, um, what's my balance please?") == "what's my balance"
    assert spoken_core("Please freeze my card") == "please freeze my card"  # a closer only at the end
    assert spoken_core("Can I pay {amount} to {person}?") == "can i pay {amount} to {person}"
    assert spoken_core("Good news, my card arrived") == "good news my card arrived"  # not an opener


@pytest.mark.parametrize("twin", ["Hello, I need to make a big payment", "freeze my card please"])
def test_phrasings_that_sound_the_same_once_rendered_are_refused(twin: str, tmp_path: Path) -> None:
    (tmp_path / "freeze.txt").write_text("Freeze my card\n")
    (tmp_path / "high_value_payment.txt").write_text(f"I need to make a big payment\n{twin}\n")
    with pytest.raises(CorpusError, match="sounds the same as"):
        load_phrasings(["freeze", "high_value_payment"], root=tmp_path)
    (tmp_path / "high_value_payment.txt").write_text("I need to make a big payment\n")
    assert len(load_phrasings(["freeze", "high_value_payment"], root=tmp_path)["freeze"]) == 1


def test_four_synthesizers_share_the_corpus() -> None:
    clips = plan_corpus(CorpusConfig(seed=0))
    flite = [c.voice for c in clips if c.voice.startswith(FLITE_PREFIX)]
    pico = [c for c in clips if c.voice.startswith(PICO_PREFIX)]
    piper = [c for c in clips if c.voice.startswith(PIPER_PREFIX)]
    assert not any(c.voice.startswith(HIBARI_PREFIX) for c in clips)  # kept for evaluation
    assert abs(len(flite) / len(clips) - FLITE_SHARE) < 0.03
    assert abs(len(pico) / len(clips) - PICO_SHARE) < 0.03
    assert abs(len(piper) / len(clips) - PIPER_SHARE) < 0.03
    assert {c.voice.removeprefix(PIPER_PREFIX) for c in piper} == set(PIPER_VOICES)
    assert len({c.rate_wpm for c in piper}) > 50  # its tempo varies like the others'
    assert {v.removeprefix(FLITE_PREFIX) for v in flite} == set(FLITE_VOICES)
    assert {c.voice.removeprefix(PICO_PREFIX) for c in pico} == set(PICO_VOICES)
    assert {c.pitch for c in pico} == set(range(PICO_MIN_PITCH, PICO_MAX_PITCH + 1))


def _median_f0_hz(samples: np.ndarray, rate_hz: int) -> float:
    """Autocorrelation pitch over the loud 64 ms frames: enough to tell 100 Hz from 200 Hz."""
    frame, found = 1024, []
    samples = samples / np.abs(samples).max()
    for start in range(0, len(samples) - frame, frame // 2):
        x = samples[start : start + frame] - samples[start : start + frame].mean()
        if np.sqrt(np.mean(x**2)) < 0.05:
            continue
        ac = np.correlate(x, x, "full")[frame - 1 :]
        lo, hi = rate_hz // 400, rate_hz // 60
        lag = int(np.argmax(ac[lo:hi])) + lo
        if ac[lag] > 0.4 * ac[0]:
            found.append(rate_hz / lag)
    return float(np.median(found))


@pytest.mark.parametrize("language", PICO_VOICES)
def test_pico_voices_follow_rate_and_pitch(language: str) -> None:
    text = "I want to freeze my card right now please"
    samples, rate_hz = speak(text, voice=PICO_PREFIX + language, wpm=150, pitch=30)
    assert rate_hz == 16000 and 1.0 < len(samples) / rate_hz < 4.0 and abs(samples).max() > 0.1
    slow, _ = speak(text, voice=PICO_PREFIX + language, wpm=100, pitch=30)
    assert len(slow) > 1.2 * len(samples)
    high, _ = speak(text, voice=PICO_PREFIX + language, wpm=150, pitch=60)
    assert _median_f0_hz(high, rate_hz) > 1.5 * _median_f0_hz(samples, rate_hz)


def test_unknown_pico_voices_are_refused() -> None:
    with pytest.raises(IntentdError, match="unknown pico voice 'en-AU'"):
        speak("hello", voice=PICO_PREFIX + "en-AU")


def test_the_piper_voice_follows_rate_and_repeats_itself_exactly() -> None:
    text = "I want to freeze my card right now please"
    samples, rate_hz = speak(text, voice=PIPER_PREFIX + "joe", wpm=170)
    assert rate_hz == 22050 and 1.0 < len(samples) / rate_hz < 4.0 and abs(samples).max() > 0.1
    again, _ = speak(text, voice=PIPER_PREFIX + "joe", wpm=170)
    assert np.array_equal(samples, again)  # the corpus is byte-identical for a seed
    slow, _ = speak(text, voice=PIPER_PREFIX + "joe", wpm=110)
    assert len(slow) > 1.3 * len(samples)


def test_unknown_piper_voices_are_refused() -> None:
    with pytest.raises(IntentdError, match="unknown piper voice 'amy'"):
        speak("hello", voice=PIPER_PREFIX + "amy")


def test_the_hibari_voice_follows_rate_and_pitch_and_repeats_itself_exactly() -> None:
    text = "I want to freeze my card right now please"
    samples, rate_hz = speak(text, voice=HIBARI_PREFIX + "heart", wpm=170, pitch=36)
    assert 1.0 < len(samples) / rate_hz < 4.0 and abs(samples).max() > 0.1
    again, again_hz = speak(text, voice=HIBARI_PREFIX + "heart", wpm=170, pitch=36)
    assert again_hz == rate_hz and np.array_equal(samples, again)
    # The pitch shift labels the clip with another rate; heard at that rate, it is still 170 wpm.
    high, high_hz = speak(text, voice=HIBARI_PREFIX + "heart", wpm=170, pitch=56)
    assert _median_f0_hz(high, high_hz) > 1.3 * _median_f0_hz(samples, rate_hz)
    assert 0.8 < (len(high) / high_hz) / (len(samples) / rate_hz) < 1.25
    slow, slow_hz = speak(text, voice=HIBARI_PREFIX + "heart", wpm=110, pitch=36)
    assert len(slow) / slow_hz > 1.3 * len(samples) / rate_hz
    with pytest.raises(IntentdError, match="unknown hibari voice 'emma'"):
        speak("hello", voice=HIBARI_PREFIX + "emma")
    with pytest.raises(IntentdError, match="positive rate and pitch"):
        speak("hello", voice=HIBARI_PREFIX + "heart", pitch=0)


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
        assert r["text"] and r["voice"].startswith(("en", FLITE_PREFIX, PICO_PREFIX, PIPER_PREFIX))
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


@pytest.mark.parametrize("folder", ["eval-phrasings", "eval-phrasings-blind"])
def test_the_evaluation_phrasings_stay_out_of_the_corpus(folder: str) -> None:
    # bench/heldout.py refuses an evaluation set that a corpus phrasing sounds like; a phrasing
    # added to the corpus must not make a shipped set unusable (or quietly train on it).
    evaluation = load_phrasings(root=Path(__file__).parents[1] / "bench" / folder)
    assert all(len(group) >= 9 for group in evaluation.values())
    assert not in_corpus(evaluation)
