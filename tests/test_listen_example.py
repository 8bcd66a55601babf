"""`intentd listen` and the C example subscriber as real processes against a real PUB socket."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from test_subscriber import FakeDaemon

from intentd_client.protocol import IntentEvent

REPO = Path(__file__).resolve().parent.parent
C_EXAMPLE = REPO / "clients" / "examples" / "c"
C_APT_PACKAGES = "gcc pkg-config libzmq3-dev libcjson-dev"
LINE_TIMEOUT_S = 5.0
EXIT_TIMEOUT_S = 5.0
WARMUP_INTENT = "warmup"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Proc:
    """A subprocess whose stdout and stderr lines are read by threads into queues."""

    def __init__(self, argv: list[str]) -> None:
        self.p = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            # As from a terminal: a suite started in the background (`make test &`) passes an
            # ignored SIGINT on to its children, and Python then never turns Ctrl-C into
            # KeyboardInterrupt, so the SIGINT test would wait forever.
            preexec_fn=_default_sigint,
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        self.err_lines: list[str] = []
        for stream, q in ((self.p.stdout, self.out), (self.p.stderr, self.err)):
            threading.Thread(target=_pump, args=(stream, q), daemon=True).start()

    def line(self, timeout_s: float = LINE_TIMEOUT_S) -> str:
        """Next stdout line."""
        try:
            return self.out.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no stdout line; stderr: {self.stderr_lines()}") from None

    def stderr_lines(self) -> list[str]:
        """All stderr lines so far."""
        while not self.err.empty():
            self.err_lines.append(self.err.get())
        return self.err_lines

    def stop(self, signum: int) -> int:
        """Send a signal and wait for the exit status."""
        self.p.send_signal(signum)
        rc = self.p.wait(EXIT_TIMEOUT_S)
        time.sleep(0.05)  # let the reader threads take the last lines
        return rc

    def kill(self) -> None:
        """Make sure the process is gone."""
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def _pump(stream: object, q: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        q.put(line.rstrip("\n"))


def warm_up(daemon: FakeDaemon, proc: Proc) -> None:
    """Publish until the process prints its first event (ZeroMQ slow joiner), then drain."""
    deadline = time.monotonic() + LINE_TIMEOUT_S
    while proc.out.empty():
        assert time.monotonic() < deadline, f"process never joined: {proc.stderr_lines()}"
        assert proc.p.poll() is None, f"process exited: {proc.stderr_lines()}"
        daemon.intent(WARMUP_INTENT)
        time.sleep(0.05)
    time.sleep(0.1)
    while not proc.out.empty():
        assert WARMUP_INTENT in proc.out.get()


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    """A fake daemon on a random localhost TCP port, in its own context."""
    ctx = zmq.Context()
    d = FakeDaemon(ctx)
    yield d
    d.close()
    ctx.destroy(linger=0)


def listen(*args: str) -> Proc:
    """Start `python -m intentd_client.listen ARGS`."""
    return Proc([sys.executable, "-m", "intentd_client.listen", *args])


def test_listen_prints_readable_lines_and_exits_0_on_sigint(daemon: FakeDaemon) -> None:
    proc = listen(daemon.endpoint, "--heartbeat-timeout", "5")
    try:
        warm_up(daemon, proc)
        a = daemon.intent("lights_on", 0.87, source="kitchen")
        daemon.skip(2)
        daemon.intent("lights_off", 0.51)
        first, second = proc.line(), proc.line()
        assert rc_and_no_traceback(proc, signal.SIGINT)
    finally:
        proc.kill()
    assert "lights_on" in first and "0.87" in first and "kitchen" in first
    assert f"{a.latency_ms.total:.0f} ms" in first
    assert time.strftime("%Y-%m-%d") in first  # local date of the event's wall_time
    assert "lights_off" in second
    err = proc.stderr_lines()
    assert any("gap: missed 2 message(s)" in line for line in err)


def test_listen_json_filters_and_exits_0_on_sigterm(daemon: FakeDaemon) -> None:
    proc = listen(
        daemon.endpoint,
        "--json",
        "--intent",
        "lights_on",
        "--intent",
        WARMUP_INTENT,
        "--min-score",
        "0.5",
        "--heartbeat-timeout",
        "0.3",
    )
    try:
        warm_up(daemon, proc)
        daemon.intent("play_music", 0.99)
        daemon.intent("lights_on", 0.2)
        want = daemon.intent("lights_on", 0.8)
        line = proc.line()
        # Silence: the lost heartbeats are reported on stderr, stdout stays pure JSON.
        deadline = time.monotonic() + LINE_TIMEOUT_S
        while not any("daemon down" in e for e in proc.stderr_lines()):
            assert time.monotonic() < deadline, proc.stderr_lines()
            time.sleep(0.05)
        assert rc_and_no_traceback(proc, signal.SIGTERM)
    finally:
        proc.kill()
    assert IntentEvent.from_json(line) == want
    assert json.loads(line)["v"] == 1
    assert proc.out.empty()


def test_listen_bad_endpoint_is_one_line_and_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "intentd_client.listen", "nonsense"],
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
    )
    assert done.returncode == 2
    assert "cannot connect to 'nonsense'" in done.stderr
    assert "Traceback" not in done.stderr


def rc_and_no_traceback(proc: Proc, signum: int) -> bool:
    """Stop the process; True when it exited 0 without a traceback."""
    rc = proc.stop(signum)
    err = proc.stderr_lines()
    assert rc == 0, err
    assert not any("Traceback" in line for line in err), err
    return True


@pytest.fixture(scope="module")
def c_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C example, built into a temporary folder."""
    if shutil.which("gcc") is None or shutil.which("pkg-config") is None:
        pytest.skip(f"C toolchain missing: apt-get install {C_APT_PACKAGES}")
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "libzmq", "libcjson"], capture_output=True, text=True
    )
    if flags.returncode != 0:
        pytest.skip(f"libzmq/cJSON headers missing: apt-get install {C_APT_PACKAGES}")
    binary = tmp_path_factory.mktemp("c-example") / "intent_sub"
    subprocess.run(
        [
            "gcc",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-o",
            str(binary),
            str(C_EXAMPLE / "intent_sub.c"),
            *flags.stdout.split(),
        ],
        check=True,
        timeout=60,
    )
    return binary


def test_c_example_prints_one_line_per_event(c_example: Path, daemon: FakeDaemon) -> None:
    proc = Proc([str(c_example), daemon.endpoint])
    try:
        warm_up(daemon, proc)
        a = daemon.intent("lights_on", 0.875, source="kitchen")
        daemon.skip(3)
        daemon.send_raw([b"intent", b"{broken"])
        daemon.send_raw([b"intent", json.dumps(json.loads(a.to_json()) | {"v": 2}).encode()])
        daemon.heartbeat()
        b = daemon.intent("lights_off", 0.5)
        lines = [proc.line(), proc.line()]
        assert rc_and_no_traceback(proc, signal.SIGTERM)
    finally:
        proc.kill()
    assert lines == [f"{a.seq} lights_on 0.875 kitchen 45 ms", f"{b.seq} lights_off 0.500 mic0 45 ms"]
    err = "\n".join(proc.stderr_lines())
    assert "gap: missed 3 message(s)" in err
    assert "malformed JSON" in err and "another protocol version" in err


def test_add_parser_registers_listen_on_a_cli() -> None:
    import argparse

    from intentd_client import listen as listen_mod

    parser = argparse.ArgumentParser(prog="intentd")
    listen_mod.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["listen", "tcp://127.0.0.1:1", "--json", "--intent", "a", "--intent", "b", "--min-score", "0.5"]
    )
    assert args.func is listen_mod.run
    assert (args.endpoint, args.json, args.intents, args.min_score) == (
        "tcp://127.0.0.1:1",
        True,
        ["a", "b"],
        0.5,
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["listen", "tcp://x:1", "--min-score", "1.5"])
