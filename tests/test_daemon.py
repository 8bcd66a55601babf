"""`intentd run` as a service would run it: real ALSA capture, real ZeroMQ, a real notify socket."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from daemonproc import GAP_S, start_daemon

TEXTS = ["what is my account balance", "please freeze my debit card", "I want to pay my electricity bill"]
WATCHDOG_USEC = 2_000_000


def test_live_capture_notify_and_graceful_stop(tiny_model: Path, tmp_path: Path) -> None:
    d = start_daemon(tmp_path, TEXTS, ["--model", str(tiny_model)], env={"WATCHDOG_USEC": str(WATCHDOG_USEC)})
    try:
        events = d.collect(len(TEXTS), deadline_s=90)
        d.poll(1.2)
        messages = d.notify.drain()
        assert len(events) == len(TEXTS), d.proc.poll()
        assert [e.source for e in events] == ["mic:intentd_test_mic"] * len(TEXTS)
        for e, (start, end) in zip(events, d.recording.spans_s, strict=True):
            assert e.start_s < end and e.end_s > start  # same utterance, on the capture's clock
        assert d.beats and all(b.run_id == events[0].run_id for b in d.beats)
        assert d.beats[-1].stats["frames_captured"] > 0
        seqs = sorted(m.seq for m in [*d.events, *d.beats])
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        ready = next(i for i, m in enumerate(messages) if "READY=1" in m.split("\n"))
        assert any(m.startswith("EXTEND_TIMEOUT_USEC=") for m in messages[:ready])
        assert "WATCHDOG=1" in messages[ready + 1 :], "watchdog pings must follow READY"
        assert any("STATUS=listening on mic:intentd_test_mic" in m for m in messages)
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=30) == 0
        assert any("STOPPING=1" in m for m in d.notify.drain())
    finally:
        d.stop()


def test_sigterm_mid_speech_publishes_the_cut_segment(tiny_model: Path, tmp_path: Path) -> None:
    long_text = "I would like to know how much money there is in my current account and in my savings"
    d = start_daemon(tmp_path, [TEXTS[0], long_text], ["--model", str(tiny_model)])
    try:
        first = d.collect(1, deadline_s=90)
        assert len(first) == 1
        # The first event comes ~hangover after its utterance ends; the long one starts GAP_S later.
        time.sleep(GAP_S + 0.5)
        d.proc.send_signal(signal.SIGTERM)
        rest = d.collect(1, deadline_s=30)
        assert d.proc.wait(timeout=30) == 0
        assert len(rest) == 1, "the segment in progress at SIGTERM must be published"
        long_end = d.recording.spans_s[1][1]
        assert rest[0].start_s > first[0].end_s and rest[0].end_s < long_end
    finally:
        d.stop()
