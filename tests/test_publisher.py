"""The publisher over a real ZeroMQ PUB→SUB connection."""

from __future__ import annotations

import time

import pytest
import zmq

from intentd.errors import ConfigError
from intentd.publisher import Publisher, Result
from intentd_client.protocol import Heartbeat, IntentEvent, parse_message


def _result(i: int) -> Result:
    now = time.monotonic()
    return Result(
        source="wav:x", intent="balance", score=0.9, top_k=(("balance", 0.9), ("freeze", 0.05)),
        start_s=float(i), end_s=i + 0.5, cut_at=now, queue_ms=1.0,
        inference_ms=2.0, model="tiny",
    )  # fmt: skip


def _subscribe(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 3000)
    sub.connect(endpoint)
    return sub


@pytest.mark.parametrize("kind", ["tcp", "ipc"])
def test_round_trip_with_rising_seq(kind: str, tmp_path) -> None:
    ctx = zmq.Context()
    endpoint = "tcp://127.0.0.1:*" if kind == "tcp" else f"ipc://{tmp_path}/pub.sock"
    pub = Publisher(endpoint, run_id="r1", context=ctx)
    assert pub.socket is not None
    endpoint = pub.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
    sub = _subscribe(ctx, endpoint)
    # Slow joiner: publish heartbeats until the subscription has reached the publisher.
    for _ in range(100):
        pub.publish_heartbeat(0.0, {})
        if sub.poll(50):
            break
    assert sub.poll(0), "subscriber never connected"
    while sub.poll(100):
        sub.recv_multipart()
    first_seq = pub.seq + 1
    pub.publish_intent(_result(0))
    pub.publish_heartbeat(1.0, {"events": 1.0})
    pub.publish_intent(_result(1))
    got = [parse_message(*sub.recv_multipart()) for _ in range(3)]
    assert [type(m) for m in got] == [IntentEvent, Heartbeat, IntentEvent]
    assert [m.seq for m in got] == [first_seq, first_seq + 1, first_seq + 2]
    assert all(m.run_id == "r1" for m in got)
    ev = got[2]
    assert isinstance(ev, IntentEvent) and ev.intent == "balance" and ev.start_s == 1.0
    assert ev.top_k[0].label == "balance" and ev.model == "tiny"
    pub.close()
    sub.close()
    ctx.term()


def test_bind_conflict_is_a_clear_error() -> None:
    ctx = zmq.Context()
    first = Publisher("tcp://127.0.0.1:*", run_id="a", context=ctx)
    assert first.socket is not None
    taken = first.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
    with pytest.raises(ConfigError, match="cannot bind publish endpoint"):
        Publisher(taken, run_id="b", context=ctx)
    first.close()
    ctx.term()
