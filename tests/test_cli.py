"""The `intentd` command end to end: replay, classify, info, and one-line errors."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import speech
from conftest import INTENTD
from tinymodel import save_tiny_checkpoint

TEXTS = [
    "I would like to check the balance of my account",
    "please freeze my card",
    "how do I pay my phone bill",
    "I want to change my address",
]


def intentd(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI."""
    return subprocess.run(
        [str(INTENTD), *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


@pytest.mark.parametrize("rate_hz", [48000, 8000])
def test_replay_gives_one_event_per_utterance(tiny_model: Path, tmp_path: Path, rate_hz: int) -> None:
    rec = speech.recording(TEXTS, rate_hz=rate_hz, gap_s=1.5, voices=["en-us", "en-gb+f3"], noise_dbfs=-60)
    wav = rec.write(tmp_path / "stream.wav")
    r = intentd("replay", str(wav), "--model", str(tiny_model), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(events) == len(TEXTS)
    for ev, (start, end) in zip(events, rec.spans_s, strict=True):
        assert ev["type"] == "intent" and ev["v"] == 1 and ev["source"] == f"wav:{wav}"
        assert abs(ev["start_s"] - start) <= 0.3 and abs(ev["end_s"] - end) <= 0.3
        assert len(ev["top_k"]) == 3 and ev["model"] == tiny_model.name
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert [e["start_s"] for e in events] == sorted(e["start_s"] for e in events), "published in order"
    assert len({e["run_id"] for e in events}) == 1


def test_replay_in_process_runs_at_the_short_switch_interval_and_puts_things_back(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from intentd.cli import GIL_SWITCH_INTERVAL_S, main

    wav = speech.recording(TEXTS[:1], rate_hz=16000, gap_s=0.5).write(tmp_path / "one.wav")
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = [signal.getsignal(s) for s in signals]
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    interval_before = sys.getswitchinterval()
    seen: set[float] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.005):
            seen.add(sys.getswitchinterval())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert main(["replay", str(wav), "--model", str(tiny_model), "--device", "cpu"]) == 0
    finally:  # main() installs the CLI's log handler; later tests expect the root logger as it was
        done.set()
        watcher.join()
        root.handlers[:] = handlers
        root.setLevel(level)
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert [signal.getsignal(s) for s in signals] == before
    assert GIL_SWITCH_INTERVAL_S in seen and GIL_SWITCH_INTERVAL_S < interval_before
    assert sys.getswitchinterval() == interval_before


def test_classify_one_line_per_file(tiny_model: Path, tmp_path: Path) -> None:
    paths = []
    for i, text in enumerate(TEXTS[:3]):
        rec = speech.recording([text], rate_hz=(8000, 16000, 44100)[i], lead_s=0.1, gap_s=0.1)
        paths.append(str(rec.write(tmp_path / f"{i}.wav")))
    r = intentd("classify", *paths, "--model", str(tiny_model))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["path"] for x in lines] == paths
    assert all(set(x) == {"path", "intent", "score", "top_k"} for x in lines)


def test_info_names_the_model(tiny_model: Path) -> None:
    r = intentd("info", "--json", "--model", str(tiny_model))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["model_path"] == str(tiny_model.resolve()) and info["device"] == "cpu"
    assert "balance" in info["labels"]
    assert info["trained_rate_hz"] is None  # not recorded: input is not band-limited


@pytest.fixture(scope="module")
def tiny_model_8k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint, saying (as `intentd train` writes) it was trained on 8 kHz audio."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-8k"), intentd_trained_rate_hz=8000)


def _with_tone_inside_speech(rec: speech.Recording, freq_hz: float) -> np.ndarray:
    """The recording with a tone over the middle half of each utterance (the VAD cuts the same)."""
    out = rec.samples.copy()
    for start_s, end_s in rec.spans_s:
        a = int((0.75 * start_s + 0.25 * end_s) * rec.rate_hz)
        b = int((0.25 * start_s + 0.75 * end_s) * rec.rate_hz)
        out[a:b] += 0.05 * np.sin(2 * np.pi * freq_hz * np.arange(b - a) / rec.rate_hz).astype(np.float32)
    return out


def _scores(lines: list[dict]) -> list[dict[str, float]]:
    return [{k["label"]: k["score"] for k in line["top_k"]} for line in lines]


def _score_change(a: list[dict], b: list[dict]) -> float:
    """The largest change in any top-k score between two runs' lines (same labels required)."""
    pairs = list(zip(_scores(a), _scores(b), strict=True))
    assert all(x.keys() == y.keys() for x, y in pairs)
    return max(abs(x[k] - y[k]) for x, y in pairs for k in x)


def test_a_model_trained_on_8khz_audio_does_not_hear_above_4khz(
    tiny_model: Path, tiny_model_8k: Path, tmp_path: Path
) -> None:
    rec = speech.recording(TEXTS[:2], rate_hz=48000, gap_s=1.5)
    plain = rec.write(tmp_path / "plain.wav", "FLOAT")
    tone = speech.Recording(_with_tone_inside_speech(rec, 6000), 48000, rec.spans_s, rec.texts)
    toned = tone.write(tmp_path / "toned.wav", "FLOAT")

    # All 14 scores, so a label leaving the top 3 cannot fail the comparison.
    config = tmp_path / "all-scores.toml"
    config.write_text("[model]\ntop_k = 14\n")

    def run(*args: str) -> list[dict]:
        r = intentd(*args, "--device", "cpu", "--config", str(config))
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]

    info = json.loads(intentd("info", "--json", "--model", str(tiny_model_8k)).stdout)
    assert info["trained_rate_hz"] == 8000
    for command in ("classify", "replay"):
        # The two checkpoints have the same weights; only the recorded training rate differs.
        # A random tiny model's scores move little, so the test compares the two moves: the
        # filter's stopband lets a trace through, measured 12-37x smaller than the full tone.
        wide = [run(command, str(p), "--model", str(tiny_model)) for p in (plain, toned)]
        narrow = [run(command, str(p), "--model", str(tiny_model_8k)) for p in (plain, toned)]
        assert len(narrow[0]) == len(narrow[1]) == (1 if command == "classify" else 2)
        assert _score_change(*narrow) <= _score_change(*wide) / 5, (
            f"{command}: a 6 kHz tone reached a model trained on 8 kHz audio"
        )


def _assert_one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0]


def test_error_missing_model(tmp_path: Path) -> None:
    wav = speech.recording(["hello"]).write(tmp_path / "a.wav")
    _assert_one_line_error(
        intentd("replay", str(wav), "--model", str(tmp_path / "no-model")), "no-model", "not found"
    )


def test_error_unreadable_wav(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    _assert_one_line_error(intentd("replay", str(bad), "--model", str(tiny_model)), "bad.wav")
    _assert_one_line_error(intentd("classify", str(bad), "--model", str(tiny_model)), "bad.wav")


def test_error_bad_config_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[vad]\nhangover = 3\n")
    _assert_one_line_error(intentd("run", "--config", str(cfg), "--check-config"), "c.toml", "hangover")


def test_error_unknown_audio_device(tiny_model: Path) -> None:
    r = intentd("run", "--model", str(tiny_model), "--source", "mic:no-such-microphone-xyz")
    _assert_one_line_error(r, "no-such-microphone-xyz")
