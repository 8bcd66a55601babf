"""Living through change: capture stalls and device loss, SIGHUP model reload, unrecoverable devices."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from daemonproc import Daemon, start_daemon
from tinymodel import save_tiny_checkpoint

TEXTS = ["what is my account balance", "please freeze my debit card", "I want to pay my electricity bill"]


def pacer_pids(d: Daemon) -> list[int]:
    """The process that clocks the ALSA file microphone (capture blocks on it)."""
    pacer = d.mic.asoundrc.parent / f"{d.mic.name}_pace.py"
    out = subprocess.run(["pgrep", "-f", str(pacer)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wait_for(d: Daemon, cond, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    """Poll the daemon's sockets until `cond()` holds."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        d.poll(0.2)
        if cond():
            return True
    return False


def test_watchdog_stops_on_stall_and_capture_recovers_from_device_loss(
    tiny_model: Path, tmp_path: Path
) -> None:
    d = start_daemon(tmp_path, TEXTS, ["--model", str(tiny_model)], env={"WATCHDOG_USEC": "2000000"})
    try:
        assert len(d.collect(1, deadline_s=90)) == 1
        pacers = pacer_pids(d)  # the pipe's shell and the pacer itself
        assert pacers
        # A stalled capture: frames stop, so watchdog pings must stop (systemd would restart us).
        for pid in pacers:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(2.5)  # the gate's limit is the watchdog timeout, 2 s
        d.poll(0.1)
        stalled_from = time.monotonic()
        time.sleep(2.0)
        d.poll(0.1)
        pings = [t for t, m in d.notify.messages if m == "WATCHDOG=1" and t > stalled_from]
        assert pings == [], "no WATCHDOG=1 while capture is stalled"
        for pid in pacers:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        assert wait_for(d, lambda: any(t > resumed and m == "WATCHDOG=1" for t, m in d.notify.messages), 5)
        # The device vanishes (its clock process dies): detected, reported, reopened.
        for pid in pacers:
            os.kill(pid, signal.SIGKILL)
        assert wait_for(d, lambda: any(b.stats.get("device_reopens", 0) >= 1 for b in d.beats), 15)
        lost = [b for b in d.beats if b.stats.get("device_lost", 0) >= 1]
        assert lost and lost[0].stats["device_lost"] == 1
        # After reopening, the file microphone plays from the start again: events flow again.
        before = len(d.events)
        assert wait_for(d, lambda: len(d.events) > before, 30)
        assert d.proc.poll() is None
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=30) == 0
    finally:
        d.stop()


def test_unrecoverable_device_exits_nonzero(tiny_model: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "intentd.toml"
    cfg.write_text("[source]\nrecover_s = 2.0\n")
    d = start_daemon(tmp_path, TEXTS[:1], ["--model", str(tiny_model), "--config", str(cfg)])
    try:
        assert wait_for(d, lambda: bool(d.beats), 60)
        d.mic.infile.unlink()  # nothing to reopen
        for pid in pacer_pids(d):
            os.kill(pid, signal.SIGKILL)
        rc = d.proc.wait(timeout=30)
        err = d.proc.stderr.read() if d.proc.stderr else ""
        assert rc != 0
        assert "Traceback" not in err
        assert "not recovered after 2 s" in err.strip().splitlines()[-1]
    finally:
        d.stop()


def test_sighup_swaps_to_a_good_model_and_refuses_a_broken_one(tiny_model: Path, tmp_path: Path) -> None:
    other = save_tiny_checkpoint(tmp_path / "second-model", seed=1)
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"\0" * 64)
    cfg = tmp_path / "intentd.toml"
    cfg.write_text(f'[model]\npath = "{tiny_model}"\n')
    d = start_daemon(tmp_path, TEXTS * 3, ["--config", str(cfg)], gap_s=1.5)
    try:
        first = d.collect(1, deadline_s=90)
        assert first and first[0].model == tiny_model.name
        cfg.write_text(f'[model]\npath = "{other}"\n')
        d.proc.send_signal(signal.SIGHUP)
        assert wait_for(d, lambda: d.events[-1].model == other.name, 30), [e.model for e in d.events]
        cfg.write_text(f'[model]\npath = "{broken}"\n')
        d.proc.send_signal(signal.SIGHUP)
        n = len(d.events)
        assert wait_for(d, lambda: len(d.events) >= n + 2, 30)
        assert all(e.model == other.name for e in d.events[n:]), "a broken model must not replace the old"
        assert d.beats[-1].stats.get("reload_failures") == 1 and d.beats[-1].stats.get("reloads") == 1
        msgs = [m for _, m in d.notify.messages]
        assert any("RELOADING=1" in m for m in msgs)
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=30) == 0
        err = d.proc.stderr.read() if d.proc.stderr else ""
        assert "reload refused" in err
    finally:
        d.stop()


pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
