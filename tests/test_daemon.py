"""`intentd run` as a service would run it: real ALSA capture, real ZeroMQ, a real notify socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import speech
import zmq
from alsa import alsa_file_device
from conftest import INTENTD

from intentd_client.protocol import Heartbeat, IntentEvent, parse_message

TEXTS = ["what is my account balance", "please freeze my debit card", "I want to pay my electricity bill"]
RATE_HZ = 48000
GAP_S = 2.0
WATCHDOG_USEC = 2_000_000


class NotifyListener:
    """The systemd side of sd_notify: an AF_UNIX datagram socket collecting messages."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        """Collect whatever has arrived."""
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return [m for _, m in self.messages]
            self.messages.append((time.monotonic(), data.decode()))


def _start(
    tmp_path: Path, texts: list[str], model: Path
) -> tuple[subprocess.Popen[str], str, NotifyListener]:
    rec = speech.recording(texts, rate_hz=RATE_HZ, gap_s=GAP_S, lead_s=1.0)
    pcm = (np.clip(rec.samples, -1, 1) * 32767).astype(np.int16)
    dev = alsa_file_device(tmp_path / "alsa", np.stack([pcm, pcm], axis=1), RATE_HZ)
    endpoint = f"ipc://{tmp_path}/events.sock"
    notify = NotifyListener(tmp_path / "notify.sock")
    env = {
        **dev.subprocess_env(),
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
    }
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [str(INTENTD), "run", "--model", str(model), "--device", "cpu",
         "--source", f"mic:{dev.name}", "--publish", endpoint],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, endpoint, notify


def _collect(
    sub: zmq.Socket, want_events: int, deadline_s: float
) -> tuple[list[IntentEvent], list[Heartbeat]]:
    events: list[IntentEvent] = []
    beats: list[Heartbeat] = []
    end = time.monotonic() + deadline_s
    while len(events) < want_events and time.monotonic() < end:
        if sub.poll(100):
            m = parse_message(*sub.recv_multipart())
            (events if isinstance(m, IntentEvent) else beats).append(m)  # type: ignore[arg-type]
    return events, beats


@pytest.fixture()
def subscriber():
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    yield sub
    sub.close(linger=0)
    ctx.term()


def test_live_capture_notify_and_graceful_stop(tiny_model: Path, tmp_path: Path, subscriber) -> None:
    proc, endpoint, notify = _start(tmp_path, TEXTS, tiny_model)
    try:
        subscriber.connect(endpoint)
        events, beats = _collect(subscriber, len(TEXTS), deadline_s=90)
        messages = notify.drain()
        assert len(events) == len(TEXTS), proc.stderr and proc.poll()
        assert [e.source for e in events] == ["mic:intentd_test_mic"] * len(TEXTS)
        starts = [e.start_s for e in events]
        assert starts == sorted(starts)
        assert beats and all(b.run_id == events[0].run_id for b in beats)
        assert "frames_captured" in beats[-1].stats and beats[-1].stats["frames_captured"] > 0
        seqs = sorted(m.seq for m in [*events, *beats])
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        ready = [i for i, m in enumerate(messages) if "READY=1" in m.split("\n")]
        assert ready, messages
        assert messages.index(messages[ready[0]]) < max(
            i for i, m in enumerate(messages) if m == "WATCHDOG=1"
        ), "watchdog pings must follow READY"
        assert any(m.startswith("EXTEND_TIMEOUT_USEC=") for m in messages[: ready[0]])
        assert any("STATUS=listening on mic:intentd_test_mic" in m for m in messages)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert any("STOPPING=1" in m for m in notify.drain())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_sigterm_mid_speech_publishes_the_cut_segment(tiny_model: Path, tmp_path: Path, subscriber) -> None:
    long_text = "I would like to know how much money there is in my current account and in my savings"
    proc, endpoint, _ = _start(tmp_path, [TEXTS[0], long_text], tiny_model)
    try:
        subscriber.connect(endpoint)
        first, _ = _collect(subscriber, 1, deadline_s=90)
        assert len(first) == 1
        # The first event comes ~hangover after its utterance ends; the long one starts GAP_S later.
        time.sleep(GAP_S + 0.5)
        os.kill(proc.pid, signal.SIGTERM)
        rest, _ = _collect(subscriber, 1, deadline_s=30)
        assert proc.wait(timeout=30) == 0
        assert len(rest) == 1, "the segment in progress at SIGTERM must be published"
        assert rest[0].start_s > first[0].end_s
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
