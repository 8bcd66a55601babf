"""Subscriber library against a real ZeroMQ PUB socket speaking protocol v1."""

from __future__ import annotations

import _thread
import asyncio
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from intentd_client.protocol import (
    TOPIC_HEARTBEAT,
    TOPIC_INTENT,
    Heartbeat,
    IntentEvent,
    LabelScore,
    Latency,
)
from intentd_client.subscriber import (
    AsyncSubscriber,
    DaemonDown,
    DaemonUp,
    Gap,
    Restart,
    StreamTracker,
    Subscriber,
)

RECV_TIMEOUT_S = 2.0
JOIN_TIMEOUT_S = 5.0
SHORT_HEARTBEAT_TIMEOUT_S = 0.3
CTRL_C_BOUND_S = 10.0  # a liveness bound, far from both the 0.2 s slice and the old 30 s wait


class FakeDaemon:
    """A real PUB socket that publishes protocol v1 messages the way intentd does."""

    def __init__(
        self, ctx: zmq.Context, endpoint: str | None = None, run_id: str = "run-a", sndhwm: int = 1000
    ) -> None:
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        if endpoint is None:
            port = self.sock.bind_to_random_port("tcp://127.0.0.1")
            endpoint = f"tcp://127.0.0.1:{port}"
        else:
            _bind_retrying(self.sock, endpoint)
        self.endpoint = endpoint
        self.run_id = run_id
        self.seq = 0
        self.started = time.monotonic()

    def heartbeat(self) -> Heartbeat:
        """Publish one heartbeat."""
        hb = Heartbeat(
            seq=self._take_seq(),
            run_id=self.run_id,
            uptime_s=time.monotonic() - self.started,
            stats={"events": 1.0},
        )
        self.sock.send_multipart([TOPIC_HEARTBEAT.encode(), hb.to_json().encode()])
        return hb

    def intent(self, intent: str = "lights_on", score: float = 0.9, source: str = "mic0") -> IntentEvent:
        """Publish one intent event."""
        ev = make_event(self._take_seq(), self.run_id, intent, score, source)
        self.sock.send_multipart([TOPIC_INTENT.encode(), ev.to_json().encode()])
        return ev

    def skip(self, n: int) -> None:
        """Use up `n` seq numbers without sending, as if those messages were dropped."""
        self.seq += n

    def send_raw(self, frames: list[bytes]) -> None:
        """Send arbitrary frames; does not use a seq number."""
        self.sock.send_multipart(frames)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close(linger=0)

    def _take_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq


def _bind_retrying(sock: zmq.Socket, endpoint: str) -> None:
    # A socket closed a moment ago may still hold the port in ZeroMQ's I/O thread.
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while True:
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError as e:
            if e.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def make_event(seq: int, run_id: str, intent: str, score: float, source: str = "mic0") -> IntentEvent:
    """A complete v1 intent event."""
    return IntentEvent(
        seq=seq,
        run_id=run_id,
        source=source,
        intent=intent,
        score=score,
        top_k=(LabelScore(intent, score), LabelScore("unknown", round(1 - score, 3))),
        start_s=1.0,
        end_s=1.8,
        wall_time=time.time(),
        latency_ms=Latency(queue=2.0, inference=30.0, total=45.0),
        model="tiny",
    )


def join(daemon: FakeDaemon, sub: Subscriber) -> None:
    """Beat until the subscription has reached the publisher (ZeroMQ slow joiner)."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while time.monotonic() < deadline:
        daemon.heartbeat()
        if sub.wait_ready(0.02):
            return
    raise AssertionError("subscriber never received a message")


def collect(sub: Subscriber, n: int) -> list[object]:
    """The next `n` items, failing if any takes longer than RECV_TIMEOUT_S."""
    items = []
    for _ in range(n):
        item = sub.recv(RECV_TIMEOUT_S)
        assert item is not None, f"timed out after {items}"
        items.append(item)
    return items


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A private context, destroyed after the test."""
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def daemon(ctx: zmq.Context) -> Iterator[FakeDaemon]:
    """A fake daemon on a random localhost TCP port."""
    d = FakeDaemon(ctx)
    yield d
    d.close()


def test_every_event_arrives_in_order(ctx: zmq.Context, daemon: FakeDaemon) -> None:
    with Subscriber(daemon.endpoint, context=ctx) as sub:
        join(daemon, sub)
        sent = [daemon.intent(score=0.5 + i / 100) for i in range(50)]
        got = collect(sub, 50)
        assert got == sent
        assert sub.recv(0.1) is None
        assert sub.stats.gaps == 0
        assert sub.stats.intents == 50
        assert sub.stats.malformed == sub.stats.wrong_version == 0


def test_events_iterator_and_heartbeats_flag(ctx: zmq.Context, daemon: FakeDaemon) -> None:
    with Subscriber(daemon.endpoint, context=ctx, timeout_s=0.3, heartbeats=True) as sub:
        join(daemon, sub)
        first = sub.recv(RECV_TIMEOUT_S)
        assert isinstance(first, Heartbeat)
        daemon.skip(1)
        sent = [daemon.intent(), daemon.heartbeat(), daemon.intent()]
        # events() hides the gap and the heartbeat but still counts them.
        assert list(sub.events())[-2:] == [sent[0], sent[2]]
        assert sub.stats.gaps == 1


def test_intent_and_min_score_filter(ctx: zmq.Context, daemon: FakeDaemon) -> None:
    with Subscriber(daemon.endpoint, intents=["lights_on", "lights_off"], min_score=0.6, context=ctx) as sub:
        join(daemon, sub)
        sent = [
            daemon.intent("lights_on", 0.9),
            daemon.intent("play_music", 0.99),
            daemon.intent("lights_off", 0.59),
            daemon.intent("lights_off", 0.6),
        ]
        got = collect(sub, 2)
        assert got == [sent[0], sent[3]]
        assert sub.recv(0.1) is None
        # Filtered events still count for seq, so filtering never looks like a gap.
        assert sub.stats.filtered == 2
        assert sub.stats.gaps == 0


def test_seq_jump_reports_gap(ctx: zmq.Context, daemon: FakeDaemon) -> None:
    with Subscriber(daemon.endpoint, context=ctx) as sub:
        join(daemon, sub)
        a = daemon.intent()
        daemon.skip(3)
        b = daemon.intent()
        daemon.skip(1)
        daemon.heartbeat()
        c = daemon.intent()
        got = collect(sub, 5)
        assert got == [
            a,
            Gap(expected_seq=a.seq + 1, got_seq=b.seq, missed=3),
            b,
            Gap(expected_seq=b.seq + 1, got_seq=b.seq + 2, missed=1),
            c,
        ]
        assert (sub.stats.gaps, sub.stats.missed) == (2, 4)


def test_real_drop_at_tiny_high_water_mark_is_accounted(ctx: zmq.Context, tmp_path: Path) -> None:
    # ipc keeps kernel buffers small, so a burst of 4000 x 10 kB messages must overflow
    # HWM=1 on both sides while the subscriber is not reading.
    d = FakeDaemon(ctx, endpoint=f"ipc://{tmp_path}/pub.sock", sndhwm=1)
    try:
        with Subscriber(d.endpoint, context=ctx, rcvhwm=1, heartbeats=True) as sub:
            join(d, sub)
            while sub.recv(0.05) is not None:
                pass
            first_seq = d.seq
            for _ in range(4000):
                d.intent(source="x" * 10_000)
            items = []
            while (item := sub.recv(0.5)) is not None:
                items.append(item)
            last = d.heartbeat()  # reveals a drop at the very end of the burst too
            while not items or items[-1] != last:
                items.append(collect(sub, 1)[0])
    finally:
        d.close()
    covered: list[int] = []
    for item in items:
        if isinstance(item, Gap):
            covered.extend(range(item.expected_seq, item.got_seq))
        elif isinstance(item, IntentEvent | Heartbeat):
            covered.append(item.seq)
    # Every seq of the burst is either delivered or reported missed, exactly once.
    assert covered == list(range(first_seq, d.seq))
    assert sub.stats.gaps >= 1
    assert sub.stats.missed == sum(i.missed for i in items if isinstance(i, Gap)) > 0


def test_restart_on_same_endpoint_is_reported_and_reconnected(ctx: zmq.Context) -> None:
    a = FakeDaemon(ctx, run_id="run-a")
    endpoint = a.endpoint
    with Subscriber(endpoint, context=ctx, heartbeat_timeout_s=SHORT_HEARTBEAT_TIMEOUT_S) as sub:
        join(a, sub)
        a.skip(5)
        a.intent()
        assert isinstance(sub.recv(RECV_TIMEOUT_S), Gap)
        assert isinstance(sub.recv(RECV_TIMEOUT_S), IntentEvent)
        a.close()
        b = FakeDaemon(ctx, endpoint=endpoint, run_id="run-b")
        try:
            items: list[object] = []
            deadline = time.monotonic() + JOIN_TIMEOUT_S
            while not any(isinstance(i, IntentEvent) for i in items):
                assert time.monotonic() < deadline, f"no event after restart: {items}"
                b.intent("after_restart")
                items.extend(iter(lambda: sub.recv(0.05), None))
        finally:
            b.close()
    notices = [i for i in items if not isinstance(i, IntentEvent | DaemonDown | DaemonUp)]
    assert notices == [Restart(old_run_id="run-a", new_run_id="run-b")]
    assert [i.intent for i in items if isinstance(i, IntentEvent)] == ["after_restart"]
    assert sub.stats.restarts == 1


def test_heartbeat_loss_reports_daemon_down_then_up(ctx: zmq.Context, daemon: FakeDaemon) -> None:
    with Subscriber(daemon.endpoint, context=ctx, heartbeat_timeout_s=SHORT_HEARTBEAT_TIMEOUT_S) as sub:
        join(daemon, sub)
        t0 = time.monotonic()
        down = sub.recv(RECV_TIMEOUT_S)
        elapsed = time.monotonic() - t0
        assert isinstance(down, DaemonDown)
        assert down.silent_s > SHORT_HEARTBEAT_TIMEOUT_S
        assert elapsed < SHORT_HEARTBEAT_TIMEOUT_S + 1.0
        assert not sub.tracker.daemon_up
        # Reported once per outage, not on every poll.
        assert sub.recv(0.5) is None
        daemon.heartbeat()
        up = sub.recv(RECV_TIMEOUT_S)
        assert isinstance(up, DaemonUp)
        assert up.down_s >= down.silent_s
        assert sub.stats.daemon_down == 1


def test_no_daemon_at_all_is_reported_down(ctx: zmq.Context, tmp_path: Path) -> None:
    with Subscriber(
        f"ipc://{tmp_path}/nobody.sock", context=ctx, heartbeat_timeout_s=SHORT_HEARTBEAT_TIMEOUT_S
    ) as sub:
        assert sub.wait_ready(0.2) is False
        assert isinstance(sub.recv(RECV_TIMEOUT_S), DaemonDown)


def test_ctrl_c_that_misses_the_poll_is_acted_on_within_a_slice(ctx: zmq.Context, tmp_path: Path) -> None:
    # interrupt_main trips SIGINT's handler without interrupting a syscall: what a real Ctrl-C
    # does when it lands after Python's last signal check but before the poll starts. The poll
    # used to run to the heartbeat deadline (60 s here), or the recv timeout (30 s).
    # Python's own Ctrl-C handler, as in a terminal: a suite started in the background inherits
    # an ignored SIGINT, and then interrupt_main does nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with Subscriber(f"ipc://{tmp_path}/nobody.sock", context=ctx, heartbeat_timeout_s=60.0) as sub:
            timer = threading.Timer(0.2, _thread.interrupt_main)
            t0 = time.monotonic()
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                sub.recv(30.0)
            timer.join()
            assert time.monotonic() - t0 < CTRL_C_BOUND_S
    finally:
        signal.signal(signal.SIGINT, previous)


def test_wait_ready_waits_for_the_first_message(ctx: zmq.Context, daemon: FakeDaemon) -> None:
    with Subscriber(daemon.endpoint, context=ctx, heartbeats=True) as sub:
        assert sub.wait_ready(0.1) is False
        join(daemon, sub)
        assert sub.tracker.ready
        # What arrived while waiting is kept, not consumed by wait_ready.
        assert isinstance(sub.recv(RECV_TIMEOUT_S), Heartbeat)


def test_bad_messages_are_counted_logged_and_skipped(
    ctx: zmq.Context, daemon: FakeDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="intentd_client.subscriber")
    with Subscriber(daemon.endpoint, context=ctx) as sub:
        join(daemon, sub)
        v2 = json.loads(make_event(daemon.seq, daemon.run_id, "x", 0.5).to_json()) | {"v": 2}
        future = json.loads(make_event(daemon.seq, daemon.run_id, "newer", 0.7).to_json())
        future |= {"emotion": "calm", "latency_ms": future["latency_ms"] | {"gpu": 1.0}}
        daemon.send_raw([b"intent", b"{not json"])
        daemon.send_raw([b"intent", json.dumps(v2).encode()])
        daemon.send_raw([b"intent"])
        daemon.send_raw([b"intent", b"{}", b"extra"])
        daemon.send_raw([b"heartbeat", b'{"v":1,"type":"heartbeat","seq":"x"}'])
        daemon.send_raw(
            [
                b"intent",
                make_event(1, "r", "y", 0.5)
                .to_json()
                .replace('"type":"intent"', '"type":"heartbeat"')
                .encode(),
            ]
        )
        daemon.send_raw([b"intent_partial", b'{"v":1}'])
        daemon.send_raw([b"intent", json.dumps(future).encode()])
        daemon.skip(1)
        good = daemon.intent()
        got = collect(sub, 2)
        assert sub.recv(0.1) is None
    assert isinstance(got[0], IntentEvent) and got[0].intent == "newer"
    assert got[1] == good
    s = sub.stats
    assert (s.malformed, s.wrong_version, s.other_topic, s.gaps) == (5, 1, 1, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 7
    assert any("version 2" in w for w in warnings)


def test_async_subscriber_same_behaviour(daemon: FakeDaemon) -> None:
    async def scenario() -> None:
        actx = zmq.asyncio.Context()
        try:
            async with AsyncSubscriber(
                daemon.endpoint,
                intents=["lights_on"],
                context=actx,
                heartbeat_timeout_s=SHORT_HEARTBEAT_TIMEOUT_S,
            ) as sub:
                assert await sub.wait_ready(0.05) is False
                for _ in range(int(JOIN_TIMEOUT_S / 0.02)):
                    daemon.heartbeat()
                    if await sub.wait_ready(0.02):
                        break
                a = daemon.intent()
                daemon.intent("other")
                daemon.skip(2)
                b = daemon.intent()
                got = [await sub.recv(RECV_TIMEOUT_S) for _ in range(3)]
                assert got == [a, Gap(expected_seq=a.seq + 2, got_seq=b.seq, missed=2), b]
                assert isinstance(await sub.recv(RECV_TIMEOUT_S), DaemonDown)
                daemon.send_raw([b"intent", b"[1, 2"])
                c = daemon.intent()
                got = [await sub.recv(RECV_TIMEOUT_S) for _ in range(2)]
                assert isinstance(got[0], DaemonUp) and got[1] == c
                assert sub.stats.malformed == 1 and sub.stats.filtered == 1
                daemon.intent()
                events = [e async for e in _take(sub.events(), 1)]
                assert events[0].intent == "lights_on"
        finally:
            actx.destroy(linger=0)

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


async def _take(it: object, n: int) -> object:
    async for item in it:  # type: ignore[attr-defined]
        yield item
        n -= 1
        if n == 0:
            return


def test_tracker_without_transport_orders_notices() -> None:
    t = StreamTracker(now=0.0, heartbeat_timeout_s=1.0)

    def frames(ev: IntentEvent) -> list[bytes]:
        return [TOPIC_INTENT.encode(), ev.to_json().encode()]

    assert t.feed(frames(make_event(7, "a", "x", 0.5)), now=0.5)[0].seq == 7
    assert t.tick(1.4) == []
    assert t.tick(1.6) == [DaemonDown(silent_s=pytest.approx(1.1))]
    assert t.tick(5.0) == []
    ev = make_event(0, "b", "y", 0.5)
    assert t.feed(frames(ev), now=6.0) == [DaemonUp(down_s=5.5), Restart(old_run_id="a", new_run_id="b"), ev]
    assert t.next_deadline() == 7.0
