"""The audio replay framing and the network source, over real ZeroMQ sockets in this process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from intentd import audio
from intentd.errors import ConfigError
from intentd.netsource import NetSource
from intentd.vad import Segmenter, VadConfig
from intentd_client import audio_protocol as ap
from intentd_client.audio_protocol import (
    Ack,
    AudioChunk,
    FrameError,
    StreamEnd,
    StreamStart,
    decode,
    decode_ack,
)

# --- framing ------------------------------------------------------------------------------------


def test_round_trip_of_every_message() -> None:
    for frame in (
        StreamStart("send-00ff", 48000, 2, "f32le"),
        StreamStart("a", ap.MIN_RATE_HZ, ap.MAX_CHANNELS, "s24le"),
        AudioChunk("x.y_z-1", 7, b"\x01\x02" * 50),
        AudioChunk("s", 0, b""),
        StreamEnd("send-00ff", 3),
    ):
        assert decode(frame.to_frames()) == frame
    ack = Ack("send-1", "rejected", reason=ap.R_OVERSIZE, detail="too big", seq=4, closed=0)
    assert decode_ack(ack.to_frames()) == ack


def test_rates_match_what_the_daemon_and_its_vad_take() -> None:
    assert (ap.MIN_RATE_HZ, ap.MAX_RATE_HZ) == (audio.MIN_RATE_HZ, audio.MAX_RATE_HZ)
    for rate in (ap.MIN_RATE_HZ, 11025, ap.MAX_RATE_HZ):
        seg = Segmenter(VadConfig(), rate, source="net:x")
        assert seg.process(np.zeros(rate // 10, np.float32)) == []
        assert seg.flush() == []


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([b"{}"], ap.R_MALFORMED),
        ([b"\xff\xfe", b""], ap.R_MALFORMED),
        ([b"[" * 900, b""], ap.R_MALFORMED),
        ([b" " * (ap.MAX_HEADER_BYTES + 1), b""], ap.R_OVERSIZE),
        ([b'{"v":2,"type":"end","stream":"s","chunks":0}', b""], ap.R_VERSION),
        ([b'{"v":true,"type":"end","stream":"s","chunks":0}', b""], ap.R_MALFORMED),
        ([b'{"v":1,"type":"stop","stream":"s"}', b""], ap.R_TYPE),
        ([b'{"v":1,"type":"end","stream":"s p","chunks":0}', b""], ap.R_STREAM_ID),
        ([b'{"v":1,"type":"end","stream":"' + b"s" * 65 + b'","chunks":0}', b""], ap.R_STREAM_ID),
        ([b'{"v":1,"type":"end","stream":"s","chunks":0}', b"x"], ap.R_SIZE),
        ([b'{"v":1,"type":"start","stream":"s","rate_hz":0,"channels":1,"format":"s16le"}', b""], ap.R_RATE),
        (
            [b'{"v":1,"type":"start","stream":"s","rate_hz":8000,"channels":0,"format":"s16le"}', b""],
            ap.R_CHANNELS,
        ),
        (
            [b'{"v":1,"type":"start","stream":"s","rate_hz":8000,"channels":1,"format":"u8"}', b""],
            ap.R_FORMAT,
        ),
        ([b'{"v":1,"type":"chunk","stream":"s","seq":-1}', b""], ap.R_MALFORMED),
        ([b'{"v":1,"type":"chunk","stream":"s","seq":0}', b"\0" * (ap.MAX_CHUNK_BYTES + 1)], ap.R_OVERSIZE),
    ],
)
def test_bad_messages_raise_frame_error_with_reason(frames: list[bytes], reason: str) -> None:
    with pytest.raises(FrameError) as e:
        decode(frames)
    assert e.value.reason == reason


def test_stream_payload_limits() -> None:
    start = StreamStart("s", 8000, 2, "s24le")
    assert start.bytes_per_frame == 6 and start.max_chunk_frames == 8000
    assert start.check_payload(6 * 8000) == 8000
    for n, reason in ((6 * 8000 + 6, ap.R_OVERSIZE), (7, ap.R_SIZE), (0, ap.R_SIZE)):
        with pytest.raises(FrameError) as e:
            start.check_payload(n)
        assert e.value.reason == reason
    assert StreamStart("s", 384_000, 32, "f32le").max_chunk_frames * 128 <= ap.MAX_CHUNK_BYTES


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_headers = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1, 2, True, "1"]) | _json_values,
        "type": st.sampled_from(["start", "chunk", "end", "ack"]) | _json_values,
        "stream": st.sampled_from(["s", "send-ab", "", "a b"]) | _json_values,
        "rate_hz": st.sampled_from([8000, 0, 10**9]) | _json_values,
        "channels": st.sampled_from([1, 2, 33]) | _json_values,
        "format": st.sampled_from(list(ap.SAMPLE_FORMATS)) | _json_values,
        "seq": st.integers(min_value=-2, max_value=2**60) | _json_values,
        "chunks": st.integers(min_value=-2, max_value=2**60) | _json_values,
    },
).map(lambda d: json.dumps(d).encode())


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.binary(max_size=64) | _headers, max_size=3).flatmap(
        lambda fs: (
            st.just(fs) if len(fs) != 2 else st.tuples(st.just(fs[0]), st.binary(max_size=40)).map(list)
        )
    )
)
def test_any_bytes_give_a_typed_frame_or_frame_error(frames: list[bytes]) -> None:
    try:
        frame = decode(frames)
    except FrameError as e:
        assert e.reason in ap.REJECT_REASONS
    else:
        assert isinstance(frame, StreamStart | AudioChunk | StreamEnd)
        assert decode(frame.to_frames()) == frame
    try:
        decode_ack(frames)
    except FrameError as e:
        assert e.reason in ap.REJECT_REASONS


# --- the source ---------------------------------------------------------------------------------


@pytest.fixture
def endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/audio.sock"


@pytest.fixture
def dealer(endpoint: str) -> Iterator[zmq.Socket]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    yield sock
    sock.close(linger=0)


def read_until(src: NetSource, finals: int, deadline_s: float = 10.0) -> list[audio.Chunk]:
    """Chunks until `finals` final chunks came, then one more read (which acks the ended streams)."""
    out: list[audio.Chunk] = []
    end = time.monotonic() + deadline_s
    while sum(c.final for c in out) < finals and time.monotonic() < end:
        chunk = src.read(0.05)
        if chunk is not None:
            out.append(chunk)
    assert src.read(0.05) is None
    return out


def acks(sock: zmq.Socket, timeout_s: float = 1.0) -> list[Ack]:
    out = []
    while sock.poll(round(timeout_s * 1000)):
        out.append(decode_ack(sock.recv_multipart()))
        timeout_s = 0.05
    return out


def by_source(chunks: list[audio.Chunk], source: str) -> list[audio.Chunk]:
    return [c for c in chunks if c.source == source]


def check_timeline(chunks: list[audio.Chunk], rate_hz: int) -> np.ndarray:
    """Contiguous start_sample from 0, one rate, final last; the samples joined."""
    assert chunks and chunks[-1].final and not any(c.final for c in chunks[:-1])
    pos = 0
    for c in chunks:
        assert c.rate_hz == rate_hz and c.start_sample == pos
        pos += len(c.samples)
    return np.concatenate([c.samples for c in chunks])


def test_two_interleaved_streams_keep_their_own_timelines(endpoint: str, dealer: zmq.Socket) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(-32768, 32767, 8000 * 3 // 2, dtype=np.int16)  # 1.5 s mono s16le at 8 kHz
    b = rng.uniform(-1, 1, (48000, 2)).astype(np.float32)  # 1 s stereo f32le at 48 kHz
    src = NetSource(endpoint, max_streams=2)
    src.open()
    assert src.rate_hz == 0 and src.name == f"net:{endpoint}"
    try:
        dealer.send_multipart(StreamStart("a", 8000, 1, "s16le").to_frames())
        dealer.send_multipart(StreamStart("b", 48000, 2, "f32le").to_frames())
        a_parts = np.array_split(a, 4)
        b_parts = np.array_split(b, 3)
        for i in range(4):
            dealer.send_multipart(AudioChunk("a", i, a_parts[i].astype("<i2").tobytes()).to_frames())
            if i < 3:
                dealer.send_multipart(AudioChunk("b", i, b_parts[i].astype("<f4").tobytes()).to_frames())
        dealer.send_multipart(StreamEnd("a", 4).to_frames())
        dealer.send_multipart(StreamEnd("b", 3).to_frames())
        chunks = read_until(src, finals=2)
    finally:
        src.close()
    assert {c.source for c in chunks} == {"net:a", "net:b"}
    np.testing.assert_array_equal(check_timeline(by_source(chunks, "net:a"), 8000), a / np.float32(32768))
    np.testing.assert_allclose(check_timeline(by_source(chunks, "net:b"), 48000), b.mean(axis=1), atol=1e-7)
    got = acks(dealer)
    assert [(x.stream_id, x.status) for x in got] == [
        ("a", "started"),
        ("b", "started"),
        ("a", "ended"),
        ("b", "ended"),
    ]
    assert [x.closed for x in got[2:]] == [1, 2]
    s = src.stats()
    assert s["net_streams_started"] == s["net_streams_ended"] == s["net_streams_closed"] == 2
    assert s["net_streams_open"] == 0 and s["net_frames_rejected"] == 0 and s["net_seq_gaps"] == 0
    assert s["net_samples"] == len(a) + len(b)


def test_s24le_decodes_sign_and_scale(endpoint: str, dealer: zmq.Socket) -> None:
    values = np.array([0, 1, -1, 2**23 - 1, -(2**23), 12345, -54321], np.int32)
    pcm = b"".join(int(v).to_bytes(3, "little", signed=True) for v in values)
    src = NetSource(endpoint)
    src.open()
    try:
        dealer.send_multipart(StreamStart("s24", 16000, 1, "s24le").to_frames())
        dealer.send_multipart(AudioChunk("s24", 0, pcm).to_frames())
        dealer.send_multipart(StreamEnd("s24", 1).to_frames())
        chunks = read_until(src, finals=1)
    finally:
        src.close()
    np.testing.assert_array_equal(check_timeline(chunks, 16000), values / np.float32(2**23))


def test_bad_messages_are_counted_and_answered_while_a_good_stream_goes_on(
    endpoint: str, dealer: zmq.Socket
) -> None:
    good = np.arange(-4000, 4000, dtype=np.int16) * 4  # 1 s at 8 kHz, in 4 chunks
    parts = np.array_split(good, 4)
    src = NetSource(endpoint, max_streams=2)
    src.open()
    bad: list[tuple[list[bytes], str]] = [
        ([b"garbage"], ap.R_MALFORMED),
        ([b"\x00\x01\x02", b"\x03"], ap.R_MALFORMED),
        (
            [b'{"v":9,"type":"start","stream":"new","rate_hz":8000,"channels":1,"format":"s16le"}', b""],
            ap.R_VERSION,
        ),
        (
            [b'{"v":1,"type":"start","stream":"x","rate_hz":8000,"channels":1,"format":"mp3"}', b""],
            ap.R_FORMAT,
        ),
        ([b'{"v":1,"type":"start","stream":"x","rate_hz":0,"channels":1,"format":"s16le"}', b""], ap.R_RATE),
        (StreamStart("good", 8000, 1, "s16le").to_frames(), ap.R_DUPLICATE_STREAM),
        (StreamStart("third", 8000, 1, "s16le").to_frames(), ap.R_TOO_MANY_STREAMS),
        (AudioChunk("nobody", 0, b"\0\0").to_frames(), ap.R_UNKNOWN_STREAM),
        (AudioChunk("good", 1, b"\0\0\0").to_frames(), ap.R_SIZE),  # odd byte count (takes seq 1)
        (AudioChunk("good", 2, b"\0\0" * 8001).to_frames(), ap.R_OVERSIZE),  # > 1 s (takes seq 2)
        (AudioChunk("good", 0, b"\0\0").to_frames(), ap.R_SEQ),  # a replay of seq 0
        (StreamEnd("other", 0).to_frames(), ap.R_UNKNOWN_STREAM),
    ]
    try:
        dealer.send_multipart(StreamStart("good", 8000, 1, "s16le").to_frames())
        dealer.send_multipart(StreamStart("second", 8000, 1, "f32le").to_frames())
        dealer.send_multipart(AudioChunk("second", 0, np.array([np.nan], "<f4").tobytes()).to_frames())
        dealer.send_multipart(AudioChunk("good", 0, parts[0].astype("<i2").tobytes()).to_frames())
        for frames, _ in bad:
            dealer.send_multipart(frames)
        for i, part in enumerate(parts[1:], start=3):
            dealer.send_multipart(AudioChunk("good", i, part.astype("<i2").tobytes()).to_frames())
        dealer.send_multipart(StreamEnd("good", 6).to_frames())
        dealer.send_multipart(StreamEnd("second", 1).to_frames())
        chunks = read_until(src, finals=2)
    finally:
        src.close()
    np.testing.assert_array_equal(
        check_timeline(by_source(chunks, "net:good"), 8000), good / np.float32(32768)
    )
    second = by_source(chunks, "net:second")
    assert len(second) == 1 and second[0].final and len(second[0].samples) == 0
    s = src.stats()
    expected = [r for _, r in bad] + [ap.R_NONFINITE]
    assert s["net_frames_rejected"] == len(expected)
    for reason in set(expected):
        assert s[f"net_rejected_{reason}"] == expected.count(reason), reason
    assert s["net_seq_gaps"] == 0 and s["net_streams_closed"] == 2
    rejected = [x for x in acks(dealer) if x.status == "rejected"]
    assert sorted(x.reason for x in rejected) == sorted(expected)
    assert {x.seq for x in rejected if x.reason in (ap.R_SIZE, ap.R_OVERSIZE)} == {1, 2}


def test_idle_stream_is_ended_with_a_final_chunk(endpoint: str, dealer: zmq.Socket) -> None:
    src = NetSource(endpoint, idle_timeout_s=0.3)
    src.open()
    try:
        dealer.send_multipart(StreamStart("quiet", 16000, 1, "s16le").to_frames())
        dealer.send_multipart(AudioChunk("quiet", 0, b"\1\0" * 160).to_frames())
        chunks = read_until(src, finals=1, deadline_s=5)
    finally:
        src.close()
    assert [(c.final, c.start_sample, len(c.samples)) for c in chunks] == [(False, 0, 160), (True, 160, 0)]
    assert src.stats()["net_streams_idle_ended"] == 1
    ended = [x for x in acks(dealer) if x.status == "ended"]
    assert [(x.stream_id, x.reason, x.closed) for x in ended] == [("quiet", ap.IDLE_TIMEOUT_REASON, 1)]


def test_unbindable_endpoint_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot bind network source endpoint tcp://"):
        NetSource("tcp://127.0.0.1:notaport").open()
