"""systemd service notifications (sd_notify) and the progress gate that decides watchdog pings."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
USEC_PER_S = 1_000_000
# sd_watchdog_enabled(3): ping at half the timeout so one late ping is not a kill.
WATCHDOG_PING_FRACTION = 0.5
SEND_TIMEOUT_S = 0.5


def _socket_address(raw: str) -> bytes | None:
    """The sockaddr_un path for a NOTIFY_SOCKET value, or None if it is not a unix socket."""
    if raw.startswith("@"):
        # Abstract namespace: the name is the bytes after a leading NUL, not NUL-terminated.
        return b"\0" + os.fsencode(raw[1:])
    if raw.startswith("/"):
        return os.fsencode(raw)
    return None


class Notifier:
    """Sends sd_notify(3) state lines to systemd; a silent no-op when not started by systemd."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._raw_address = address
        self._address = _socket_address(address) if address else None
        if address and self._address is None:
            # vsock:/other transports of newer systemd are not needed for a local daemon.
            log.warning("NOTIFY_SOCKET=%r is not a unix socket path; notifications off", address)
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False
        self.sent = 0
        self.send_failures = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Build from NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID (default: os.environ)."""
        env = os.environ if environ is None else environ
        return cls(env.get(NOTIFY_SOCKET_ENV) or None, _watchdog_usec_from_env(env))

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) finished: READY=1, optionally with a STATUS= line."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(_status_field(status))
        return self.send(*fields)

    def reloading(self) -> bool:
        """A reload began (SIGHUP); follow it with ready() when the new model is in place."""
        # MONOTONIC_USEC lets newer systemd (Type=notify-reload) match this to its own signal.
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by `systemctl status`."""
        return self.send(_status_field(text))

    def extend_timeout(self, seconds: float | None = None, *, usec: int | None = None) -> bool:
        """Ask for at least this much more start/stop time from now (EXTEND_TIMEOUT_USEC=)."""
        if (seconds is None) == (usec is None):
            raise ValueError("extend_timeout takes exactly one of seconds or usec")
        if seconds is not None:
            usec = round(seconds * USEC_PER_S)
        assert usec is not None
        if usec <= 0:
            raise ValueError(f"extend_timeout must be positive, got {usec} usec")
        return self.send(f"EXTEND_TIMEOUT_USEC={usec}")

    def watchdog(self) -> bool:
        """Keep-alive ping (WATCHDOG=1); call only when WatchdogGate says the pipeline moves."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began (STOPPING=1), optionally with a STATUS= line."""
        fields = ["STOPPING=1"]
        if status is not None:
            fields.append(_status_field(status))
        return self.send(*fields)

    def watchdog_timeout_s(self) -> float | None:
        """The WatchdogSec= systemd enforces on this process, or None when there is none."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / USEC_PER_S

    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half the watchdog timeout, or None when no watchdog is armed."""
        timeout_s = self.watchdog_timeout_s()
        return None if timeout_s is None else timeout_s * WATCHDOG_PING_FRACTION

    def send(self, *fields: str) -> bool:
        """Send KEY=VALUE lines as one datagram; False (logged, counted) instead of raising."""
        if self._address is None:
            return False
        payload = "\n".join(fields).encode()
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    # A manager that stops reading fills the datagram queue (10 deep by
                    # default); the daemon must not hang on it, so a send gives up.
                    self._sock.settimeout(SEND_TIMEOUT_S)
                self._sock.sendto(payload, self._address)
        except OSError as e:
            self.send_failures += 1
            if not self._failing:
                # Once per outage: a gone manager must not flood the log at every ping.
                log.warning("sd_notify to %s failed: %s (further failures counted)", self._raw_address, e)
                self._failing = True
            return False
        if self._failing:
            log.info(
                "sd_notify to %s works again after %d failures",
                self._raw_address,
                self.send_failures,
            )
            self._failing = False
        self.sent += 1
        return True

    def close(self) -> None:
        """Close the socket; later sends reopen it."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _status_field(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment in the datagram.
    return "STATUS=" + " ".join(text.splitlines())


def _watchdog_usec_from_env(env: Mapping[str, str]) -> int | None:
    raw = env.get(WATCHDOG_USEC_ENV)
    if not raw:
        return None
    pid = env.get(WATCHDOG_PID_ENV)
    if pid:
        # The variables leak into children; only the process systemd watches should ping.
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            log.warning("ignoring unparsable %s=%r", WATCHDOG_PID_ENV, pid)
            return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring unparsable %s=%r", WATCHDOG_USEC_ENV, raw)
        return None
    if usec <= 0:
        log.warning("ignoring non-positive %s=%r", WATCHDOG_USEC_ENV, raw)
        return None
    return usec


class WatchdogGate:
    """Decides whether the pipeline is making progress, so watchdog pings stop when it is not.

    Capture marks frames, the batch worker brackets each batch; the runner's loop asks
    healthy(). Each mark is one attribute store, safe to call from any thread without a lock.
    """

    def __init__(self, max_stall_s: float, now: float | None = None) -> None:
        if max_stall_s <= 0:
            raise ValueError(f"max_stall_s must be positive, got {max_stall_s}")
        self.max_stall_s = max_stall_s
        # Start counts as progress: a capture that never delivers fails after max_stall_s.
        self._last_frames = _now(now)
        self._batch_started: float | None = None

    def reset(self, now: float | None = None) -> None:
        """Start over (after a reload or a capture restart) as if just constructed."""
        self._last_frames = _now(now)
        self._batch_started = None

    def mark_frames(self, now: float | None = None) -> None:
        """Audio arrived from the source."""
        self._last_frames = _now(now)

    def mark_batch_started(self, now: float | None = None) -> None:
        """The worker handed a batch to the model."""
        self._batch_started = _now(now)

    def mark_batch_done(self) -> None:
        """The worker got the batch's results back (or gave up on it)."""
        self._batch_started = None

    def problem(self, now: float | None = None) -> str | None:
        """Why the pipeline looks stuck, or None when it is healthy."""
        t = _now(now)
        frames_age_s = t - self._last_frames
        if frames_age_s > self.max_stall_s:
            return f"no audio frames for {frames_age_s:.1f} s"
        started = self._batch_started
        if started is not None and t - started > self.max_stall_s:
            return f"model batch running for {t - started:.1f} s"
        return None

    def healthy(self, now: float | None = None) -> bool:
        """Frames arrived within max_stall_s and no batch has been in flight longer than that."""
        return self.problem(now) is None


def _now(now: float | None) -> float:
    return time.monotonic() if now is None else now
