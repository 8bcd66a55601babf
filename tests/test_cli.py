"""The `intentd` command end to end: replay, classify, info, and one-line errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import speech
from conftest import INTENTD

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
