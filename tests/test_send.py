"""`intentd send` into a running daemon that keeps listening to its microphone."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import speech
import zmq
from conftest import INTENTD
from daemonproc import start_daemon

from intentd_client.audio_protocol import AudioChunk, StreamStart
from intentd_client.protocol import IntentEvent

MIC_TEXTS = ["what is my account balance", "please freeze my debit card", "I want to pay my electricity bill"]
A_TEXTS = ["turn on the lights in the kitchen", "set an alarm for seven in the morning"]
B_TEXTS = ["how much money do I have", "cancel my last payment please"]
MIC_SOURCE = "mic:intentd_test_mic"
GARBAGE = [
    [b"not a header"],
    [b"\xff\x00", b"\x01"],
    [b'{"v":7,"type":"start","stream":"evil","rate_hz":8000,"channels":1,"format":"s16le"}', b""],
    StreamStart("evil", 16000, 1, "s16le").to_frames(),
    AudioChunk("evil", 0, b"\0" * 40000).to_frames(),  # over 1 s of 16 kHz s16le
    AudioChunk("ghost", 0, b"\0\0").to_frames(),
]


def test_send_replays_files_into_a_live_daemon(tiny_model: Path, tmp_path: Path) -> None:
    a = speech.recording(A_TEXTS, rate_hz=16000, gap_s=1.2, lead_s=0.5)
    b = speech.recording(B_TEXTS, rate_hz=44100, gap_s=1.2, lead_s=0.5)
    a_wav = a.write(tmp_path / "a.wav")
    b_wav = b.write(tmp_path / "b.wav", subtype="FLOAT")
    bad_wav = tmp_path / "bad.wav"
    bad_wav.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    net = f"ipc://{tmp_path}/audio.sock"
    d = start_daemon(tmp_path, MIC_TEXTS, ["--model", str(tiny_model), "--source", f"net:{net}"])
    garbage = zmq.Context.instance().socket(zmq.DEALER)
    garbage.setsockopt(zmq.LINGER, 0)
    try:
        end = time.monotonic() + 90
        while not d.beats and time.monotonic() < end:  # the daemon is up: model loaded, sockets bound
            d.poll(0.2)
        assert d.beats, d.proc.poll()
        files = [str(a_wav), str(bad_wav), str(b_wav)]
        send = subprocess.Popen(
            [
                str(INTENTD),
                "send",
                *files,
                "--to",
                net,
                "--wait",
                d.endpoint,
                "--realtime",
                "--timeout",
                "60",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        garbage.connect(net)
        time.sleep(1.0)  # into the middle of the first stream
        for frames in GARBAGE:
            garbage.send_multipart(frames)
        while send.poll() is None:
            d.poll(0.2)
        out, err = send.communicate()
        mic_end = time.monotonic() + 60
        while (
            len([e for e in d.events if e.source == MIC_SOURCE]) < len(MIC_TEXTS)
            and time.monotonic() < mic_end
        ):
            d.poll(0.2)
        d.poll(1.2)  # one more heartbeat
    finally:
        garbage.close(linger=0)
        d.stop()

    assert send.returncode == 2, err
    bad_lines = [line for line in err.splitlines() if str(bad_wav) in line]
    assert len(bad_lines) == 1 and "not a readable audio file" in bad_lines[0], err
    streams = dict(re.findall(r"intentd send: (\S+) -> stream (send-[0-9a-f]{12}) ", err))
    assert set(streams) == {str(a_wav), str(b_wav)}, err
    printed = [IntentEvent.from_json(line) for line in out.splitlines()]
    for wav, rec in ((a_wav, a), (b_wav, b)):
        mine = [e for e in printed if e.source == f"net:{streams[str(wav)]}"]
        assert len(mine) == len(rec.texts), (wav, out, err)
        for e, (start, stop) in zip(mine, rec.spans_s, strict=True):
            assert e.start_s < stop and e.end_s > start  # the same utterance, on the file's own clock
    assert len(printed) == len(a.texts) + len(b.texts), out
    published = {(e.source, e.start_s) for e in d.events}
    assert {(e.source, e.start_s) for e in printed} <= published
    mic = [e for e in d.events if e.source == MIC_SOURCE]
    assert len(mic) == len(MIC_TEXTS), [(e.source, e.start_s) for e in d.events]
    stats = d.beats[-1].stats
    assert stats["net_streams_started"] == 3 and stats["net_streams_ended"] == 2  # `evil` never ends
    assert stats["net_frames_rejected"] == len(GARBAGE) - 1  # the `evil` start itself was fine
    assert stats["net_rejected_malformed"] == 2 and stats["net_rejected_version"] == 1
    assert stats["net_rejected_oversize"] == 1 and stats["net_rejected_unknown_stream"] == 1
