"""systemd integration: sd_notify over real AF_UNIX sockets, the watchdog gate, journal logging."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from intentd.errors import ConfigError
from intentd.journal import parse_level, setup_logging, syslog_priority
from intentd.notify import Notifier, WatchdogGate

RECV_TIMEOUT_S = 2.0


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(RECV_TIMEOUT_S)
    return sock


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A stand-in for systemd's notify socket: (NOTIFY_SOCKET value, bound receiving socket)."""
    if request.param == "path":
        path = str(tmp_path / "notify")
        sock = _receiver(path)
        value = path
    else:
        name = f"intentd-test-{uuid.uuid4().hex}"
        sock = _receiver(b"\0" + name.encode())
        value = "@" + name
    yield value, sock
    sock.close()


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_each_message_arrives_exactly(manager: tuple[str, socket.socket]) -> None:
    value, sock = manager
    n = Notifier.from_env({"NOTIFY_SOCKET": value})
    assert n.enabled
    assert n.ready()
    assert _recv(sock) == "READY=1"
    assert n.ready("listening on tcp://127.0.0.1:5556")
    assert _recv(sock) == "READY=1\nSTATUS=listening on tcp://127.0.0.1:5556"
    assert n.status("loading model\nfrom /var/lib/intentd")
    assert _recv(sock) == "STATUS=loading model from /var/lib/intentd"
    assert n.watchdog()
    assert _recv(sock) == "WATCHDOG=1"
    assert n.extend_timeout(90)
    assert _recv(sock) == "EXTEND_TIMEOUT_USEC=90000000"
    assert n.extend_timeout(usec=1500)
    assert _recv(sock) == "EXTEND_TIMEOUT_USEC=1500"
    assert n.extend_timeout(0.25)
    assert _recv(sock) == "EXTEND_TIMEOUT_USEC=250000"
    assert n.stopping()
    assert _recv(sock) == "STOPPING=1"
    assert n.reloading()
    reload_fields = _recv(sock).split("\n")
    assert reload_fields[0] == "RELOADING=1"
    assert reload_fields[1].startswith("MONOTONIC_USEC=")
    assert int(reload_fields[1].split("=", 1)[1]) > 0
    assert n.sent == 9
    assert n.send_failures == 0
    n.close()


def test_messages_carry_our_pid_for_notify_access_main(tmp_path: Path) -> None:
    # NotifyAccess=main makes systemd drop datagrams whose sender credentials are another PID.
    path = str(tmp_path / "notify")
    sock = _receiver(path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    n.watchdog()
    _, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    level, kind, data = ancdata[0]
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    assert int.from_bytes(data[:4], "little") == os.getpid()
    sock.close()
    n.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert not n.ready("x")
    assert not n.watchdog()
    assert not n.extend_timeout(5)
    assert not n.stopping()
    assert n.watchdog_interval_s() is None
    assert (n.sent, n.send_failures) == (0, 0)


def test_send_failure_is_counted_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.WARNING, logger="intentd.notify"):
        for _ in range(5):
            assert not n.watchdog()
    assert n.send_failures == 5
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    # The manager comes back: sends work again without a new Notifier.
    sock = _receiver(str(tmp_path / "nobody-listens"))
    assert n.watchdog()
    assert _recv(sock) == "WATCHDOG=1"
    sock.close()
    n.close()


def test_non_unix_address_disables_notifications() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_extend_timeout_rejects_bad_arguments(tmp_path: Path) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "s")})
    with pytest.raises(ValueError):
        n.extend_timeout()
    with pytest.raises(ValueError):
        n.extend_timeout(1.0, usec=5)
    with pytest.raises(ValueError):
        n.extend_timeout(0)


@pytest.mark.parametrize(
    ("env", "interval_s"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "3000"}, 0.0015),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "me"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_this_pid(
    env: dict[str, str], interval_s: float | None
) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", **env})
    assert n.watchdog_interval_s() == interval_s


MAX_STALL_S = 5.0


def test_gate_is_healthy_while_frames_flow() -> None:
    gate = WatchdogGate(MAX_STALL_S, now=0.0)
    for t in range(0, 60):
        gate.mark_frames(float(t))
        if t % 3 == 0:
            gate.mark_batch_started(float(t))
        assert gate.healthy(t + 0.5), gate.problem(t + 0.5)
        gate.mark_batch_done()


def test_gate_is_unhealthy_after_a_capture_stall() -> None:
    gate = WatchdogGate(MAX_STALL_S, now=0.0)
    gate.mark_frames(10.0)
    assert gate.healthy(10.0 + MAX_STALL_S)
    assert not gate.healthy(10.0 + MAX_STALL_S + 0.1)
    assert "no audio frames" in (gate.problem(20.0) or "")
    gate.mark_frames(21.0)
    assert gate.healthy(21.0)


def test_gate_without_any_frames_fails_after_the_grace_period() -> None:
    gate = WatchdogGate(MAX_STALL_S, now=100.0)
    assert gate.healthy(100.0 + MAX_STALL_S)
    assert not gate.healthy(100.0 + MAX_STALL_S + 1.0)
    gate.reset(now=200.0)
    assert gate.healthy(201.0)


def test_gate_is_unhealthy_when_a_batch_hangs_even_with_frames_flowing() -> None:
    gate = WatchdogGate(MAX_STALL_S, now=0.0)
    gate.mark_batch_started(1.0)
    for t in range(1, 10):
        gate.mark_frames(float(t))
    assert gate.healthy(1.0 + MAX_STALL_S)
    assert not gate.healthy(9.0)
    assert "model batch" in (gate.problem(9.0) or "")
    gate.mark_batch_done()
    assert gate.healthy(9.0)


def test_gate_uses_the_monotonic_clock_by_default() -> None:
    gate = WatchdogGate(MAX_STALL_S)
    gate.mark_frames()
    gate.mark_batch_started()
    assert gate.healthy()


def test_gate_rejects_a_non_positive_stall() -> None:
    with pytest.raises(ValueError):
        WatchdogGate(0.0)


def test_runner_loop_pings_only_while_healthy(manager: tuple[str, socket.socket]) -> None:
    # The loop the runner is expected to run, on a simulated clock: pings stop at the stall.
    value, sock = manager
    n = Notifier.from_env({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "4000000"})
    interval_s = n.watchdog_interval_s()
    assert interval_s == 2.0
    gate = WatchdogGate(max_stall_s=4.0, now=0.0)
    pings = []
    t = 0.0
    while t <= 20.0:
        if t <= 8.0:
            gate.mark_frames(t)  # capture stalls after t=8
        if gate.healthy(t) and n.watchdog():
            pings.append(t)
        t += interval_s
    assert pings == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    sock.settimeout(0.1)
    assert [_recv(sock) for _ in pings] == ["WATCHDOG=1"] * len(pings)
    with pytest.raises(TimeoutError):
        _recv(sock)
    n.close()


# --- journal.setup_logging: the entry point's log format under systemd ----------------------

_LOG_SCRIPT = """
import logging
from intentd.journal import setup_logging
setup_logging("debug")
log = logging.getLogger("intentd.capture")
log.debug("frame %d", 1)
log.info("opened mic")
log.warning("overflow, dropped %d chunks", 3)
log.error("device gone")
try:
    raise RuntimeError("boom")
except RuntimeError:
    log.exception("worker failed")
"""


def _run_logging(tmp_path: Path, env_extra: dict[str, str], journal_stream: bool) -> list[str]:
    err_path = tmp_path / "stderr.txt"
    with err_path.open("wb") as err:
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
        if journal_stream:
            # What systemd sets when stderr is its journal stream: the stream's device:inode.
            st = os.fstat(err.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        env.update(env_extra)
        subprocess.run([sys.executable, "-c", _LOG_SCRIPT], stderr=err, env=env, check=True)
    # setup_logging's own debug line says which format it picked; the script's lines follow.
    return [line for line in err_path.read_text().splitlines() if "intentd.journal:" not in line]


def test_journal_lines_have_priority_prefixes_and_no_timestamps(tmp_path: Path) -> None:
    lines = _run_logging(tmp_path, {}, journal_stream=True)
    assert lines[:5] == [
        "<7>intentd.capture: frame 1",
        "<6>intentd.capture: opened mic",
        "<4>intentd.capture: overflow, dropped 3 chunks",
        "<3>intentd.capture: device gone",
        "<3>intentd.capture: worker failed",
    ]
    # journald splits on newlines: every traceback line keeps the error priority.
    assert lines[5] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>RuntimeError: boom"
    assert all(line.startswith("<3>") for line in lines[4:])
    assert not any(re.search(r"\d\d:\d\d:\d\d", line) for line in lines)


def test_plain_format_has_timestamps_outside_systemd(tmp_path: Path) -> None:
    lines = _run_logging(tmp_path, {}, journal_stream=False)
    timestamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(timestamp + " INFO intentd.capture: opened mic", lines[1])
    assert not any(line.startswith("<") for line in lines)


def test_journal_stream_of_another_file_means_plain_format(tmp_path: Path) -> None:
    # StandardError=file:... keeps JOURNAL_STREAM (for stdout) but stderr is not the journal.
    lines = _run_logging(tmp_path, {"JOURNAL_STREAM": "1:1"}, journal_stream=False)
    assert lines[1].endswith("INFO intentd.capture: opened mic")
    assert not lines[1].startswith("<")


def test_invocation_id_alone_selects_the_journal_format(tmp_path: Path) -> None:
    lines = _run_logging(tmp_path, {"INVOCATION_ID": "0" * 32}, journal_stream=False)
    assert lines[1] == "<6>intentd.capture: opened mic"


def test_priority_mapping_and_level_names() -> None:
    levels = (5, 10, 15, 20, 25, 30, 40, 50)
    assert [syslog_priority(lv) for lv in levels] == [7, 7, 7, 6, 6, 4, 3, 2]
    assert parse_level("warning") == logging.WARNING
    assert parse_level(" DEBUG ") == logging.DEBUG
    assert parse_level(logging.ERROR) == logging.ERROR
    with pytest.raises(ConfigError, match="unknown log level"):
        parse_level("chatty")


def test_setup_logging_twice_keeps_one_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    stream = io.StringIO()
    try:
        first = setup_logging("info", journal=True, stream=stream)
        second = setup_logging("info", journal=True, stream=stream)
        assert first not in root.handlers
        assert second in root.handlers
        logging.getLogger("intentd.test").info("hello")
        assert stream.getvalue() == "<6>intentd.test: hello\n"
    finally:
        root.removeHandler(second)
        root.setLevel(level)
    assert root.handlers == before


def test_deaf_manager_never_hangs_the_daemon(tmp_path: Path) -> None:
    """The datagram queue holds ~10 messages; past that a send must give up, not block forever."""

    path = tmp_path / "deaf.sock"
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(str(path))
    n = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    started = time.monotonic()
    results = [n.watchdog() for _ in range(14)]
    assert time.monotonic() - started < 14 * 0.5 + 2
    assert results[0] and not all(results)
    assert n.send_failures >= 1
    n.close()
    deaf.close()
