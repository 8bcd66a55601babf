"""A real `intentd run` subprocess for tests: ALSA file-PCM microphone, notify socket, ZeroMQ subscriber."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import speech
import zmq
from alsa import AlsaFileDevice, alsa_file_device
from conftest import INTENTD

from intentd_client.protocol import Heartbeat, IntentEvent, parse_message

RATE_HZ = 48000
GAP_S = 2.0


class NotifyListener:
    """The systemd side of sd_notify: an AF_UNIX datagram socket collecting messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        """Collect whatever has arrived; returns every message so far."""
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return [m for _, m in self.messages]
            self.messages.append((time.monotonic(), data.decode()))


@dataclass
class Daemon:
    """A running daemon and the test's ends of its sockets."""

    proc: subprocess.Popen[str]
    endpoint: str
    notify: NotifyListener
    mic: AlsaFileDevice
    recording: speech.Recording
    sub: zmq.Socket
    events: list[IntentEvent] = field(default_factory=list)
    beats: list[Heartbeat] = field(default_factory=list)

    def collect(self, want_events: int, deadline_s: float) -> list[IntentEvent]:
        """Receive until `want_events` more intent events arrive or the deadline passes; the new ones."""
        before = len(self.events)
        end = time.monotonic() + deadline_s
        while len(self.events) - before < want_events and time.monotonic() < end:
            self.poll(0.1)
        return self.events[before:]

    def poll(self, timeout_s: float) -> None:
        """Receive whatever arrives within `timeout_s` (and read the notify socket, as systemd would)."""
        self.notify.drain()
        end = time.monotonic() + timeout_s
        while self.sub.poll(max(0, int((end - time.monotonic()) * 1000))):
            m = parse_message(*self.sub.recv_multipart())
            if isinstance(m, IntentEvent):
                self.events.append(m)
            else:
                self.beats.append(m)

    def stop(self) -> None:
        """Kill the process if it still runs and close the sockets."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.sub.close(linger=0)
        self.notify.sock.close()


def start_daemon(
    tmp_path: Path,
    texts: list[str],
    args: list[str],
    env: dict[str, str] | None = None,
    gap_s: float = GAP_S,
) -> Daemon:
    """Start `intentd run` capturing `texts` (spoken, 48 kHz stereo) from an ALSA file microphone."""
    rec = speech.recording(texts, rate_hz=RATE_HZ, gap_s=gap_s, lead_s=1.0)
    pcm = (np.clip(rec.samples, -1, 1) * 32767).astype(np.int16)
    mic = alsa_file_device(tmp_path / "alsa", np.stack([pcm, pcm], axis=1), RATE_HZ)
    endpoint = f"ipc://{tmp_path}/events.sock"
    notify = NotifyListener(tmp_path / "notify.sock")
    full_env = {**mic.subprocess_env(), "NOTIFY_SOCKET": str(notify.path), **(env or {})}
    full_env.pop("WATCHDOG_PID", None)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    proc = subprocess.Popen(
        [str(INTENTD), "run", "--device", "cpu", "--source", f"mic:{mic.name}", "--publish", endpoint, *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Daemon(proc, endpoint, notify, mic, rec, sub)
