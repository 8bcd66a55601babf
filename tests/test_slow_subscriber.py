"""A subscriber that connects and never reads must not stall publishing, starve others, or grow memory."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import zmq

from intentd.publisher import SNDHWM_MESSAGES, Publisher, Result

N_MESSAGES = 200_000
WARMUP_MESSAGES = 3 * SNDHWM_MESSAGES  # enough to fill the stalled subscriber's queue first
BATCH = SNDHWM_MESSAGES // 2  # the reading subscriber drains after each batch: it never lags past SNDHWM
SLOW_RCVHWM = 10
MB = 1 << 20
# A send that waited for the stalled peer would hang for good; this only absorbs scheduler noise.
MAX_PUBLISH_CALL_S = 0.5


def _result(i: int) -> Result:
    now = time.monotonic()
    return Result(
        source="net:kitchen", intent="transfer_money", score=0.91,
        top_k=(("transfer_money", 0.91), ("balance", 0.05), ("freeze_card", 0.02)),
        start_s=float(i), end_s=i + 1.25, cut_at=now, queue_ms=1.5,
        inference_ms=12.0, model="banking-v3",
    )  # fmt: skip


def _rss_bytes() -> int:
    """This process's resident set (VmRSS), in bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A private context."""
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _sub(ctx: zmq.Context, endpoint: str, rcvhwm: int) -> zmq.Socket:
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, rcvhwm)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(endpoint)
    return s


class Reader:
    """The well-behaved subscriber: reads everything, checks seq is gapless."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.received = 0
        self.last_seq = 0
        self.gaps = 0

    def drain(self, until_seq: int, timeout_s: float = 30.0) -> None:
        """Read until the message with `until_seq` arrived."""
        deadline = time.monotonic() + timeout_s
        while self.last_seq < until_seq:
            assert time.monotonic() < deadline, f"reader stuck at seq {self.last_seq} of {until_seq}"
            if not self.sock.poll(100):
                continue
            while True:
                try:
                    _, payload = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                # The seq field is all this reader needs; a full parse would only slow the test.
                seq = json.loads(payload)["seq"]
                if seq != self.last_seq + 1:
                    self.gaps += 1
                self.last_seq = seq
                self.received += 1


def _publish(pub: Publisher, reader: Reader, n: int) -> tuple[float, float]:
    """Publish n intents in batches, the reader catching up between them; (slowest, mean) call in s."""
    # Only a running max and sum: a list of n timings would itself grow RSS by megabytes.
    slowest = total = 0.0
    for start in range(0, n, BATCH):
        for i in range(start, min(n, start + BATCH)):
            t0 = time.perf_counter()
            pub.publish_intent(_result(i))
            took = time.perf_counter() - t0
            slowest = max(slowest, took)
            total += took
        reader.drain(pub.seq)
    return slowest, total / n


def test_a_subscriber_that_never_reads_stalls_nothing_and_memory_stays_bounded(ctx: zmq.Context) -> None:
    pub = Publisher("tcp://127.0.0.1:*", run_id="slow", context=ctx)
    assert pub.socket is not None
    endpoint = pub.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
    slow = _sub(ctx, endpoint, SLOW_RCVHWM)
    reader = Reader(_sub(ctx, endpoint, 1000))
    # Slow joiner: both subscriptions must have reached the publisher. poll() does not read.
    for _ in range(200):
        pub.publish_heartbeat(0.0, {})
        if slow.poll(20) and reader.sock.poll(0):
            break
    assert slow.poll(0) and reader.sock.poll(0), "subscribers never connected"
    reader.drain(pub.seq)
    reader.gaps = 0  # heartbeats sent before the reader joined do not count

    message_bytes = len(pub.publish_intent(_result(0)).to_json()) + len("intent")
    reader.drain(pub.seq)
    # Warm-up fills the stalled subscriber's pipe to SNDHWM (and the kernel's buffers) and lets
    # the allocators reach their working size; what follows must not grow.
    warm_slowest, _ = _publish(pub, reader, WARMUP_MESSAGES)
    rss_before = _rss_bytes()
    first_seq = pub.seq + 1
    slowest, mean = _publish(pub, reader, N_MESSAGES)
    rss_after = _rss_bytes()

    # The reading subscriber got every message, in order, none lost.
    assert reader.last_seq == pub.seq and reader.gaps == 0
    assert reader.received >= N_MESSAGES
    # Publishing never waited for the stalled one.
    assert slowest < MAX_PUBLISH_CALL_S, f"slowest publish call {slowest:.3f} s"
    assert warm_slowest < MAX_PUBLISH_CALL_S
    # Memory: ZeroMQ keeps at most SNDHWM messages for the stalled peer (already queued during
    # warm-up), so N more messages add nothing that stays. Unbounded queueing would add
    # N * message_bytes (~90 MB here); the allowance is one full SNDHWM queue, ~5 MB.
    # Twice that: malloc arenas and the kernel's socket buffers add a few MB of their own (4.0 MB
    # was seen once against a 3.5 MB queue); still a quarter of what unbounded queueing would take.
    allowance = 2 * SNDHWM_MESSAGES * message_bytes
    growth = rss_after - rss_before
    assert growth < allowance, (
        f"RSS grew {growth / MB:.1f} MB over {N_MESSAGES} messages of {message_bytes} B "
        f"(allowed {allowance / MB:.1f} MB; unbounded would be {N_MESSAGES * message_bytes / MB:.0f} MB)"
    )

    # The stalled subscriber lost messages (its queue overflowed) rather than holding everything.
    got = 0
    last_seq = 0
    while slow.poll(200):
        while True:
            try:
                _, payload = slow.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            got += 1
            last_seq = json.loads(payload)["seq"]
    assert 0 < got < N_MESSAGES // 4, f"stalled subscriber still got {got}"
    # PUB drops the *newest* for a full peer: all it holds was queued during warm-up.
    assert last_seq < first_seq
    print(
        f"\n{N_MESSAGES} messages of {message_bytes} B: RSS {rss_before / MB:.1f} -> "
        f"{rss_after / MB:.1f} MB, slowest publish {slowest * 1e3:.2f} ms, mean {mean * 1e6:.1f} us; "
        f"stalled subscriber got {got}"
    )
    slow.close()
    reader.sock.close()
    pub.close()
