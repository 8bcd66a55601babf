"""Sources on real parts: generated speech in real WAV files, real PortAudio/ALSA capture."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from alsa import AlsaFileDevice, alsa_file_device, use_in_process
from speech import recording

from intentd.audio import Chunk, read_wav, to_mono_float32
from intentd.devices import list_input_devices
from intentd.errors import AudioDeviceError, AudioFileError
from intentd.sources import EndOfStream, MicSource, WavSource

READ_TIMEOUT_S = 2.0
# Capture through the test device starts with a burst and then runs at real time; give it
# this much longer than the audio itself before calling it stuck.
CAPTURE_SLACK_S = 5.0


def drain(source: WavSource) -> list[Chunk]:
    """Every chunk of a finite source, up to EndOfStream."""
    chunks = []
    while True:
        try:
            chunk = source.read(READ_TIMEOUT_S)
        except EndOfStream:
            return chunks
        if chunk is not None:
            chunks.append(chunk)


def assert_contiguous(chunks: list[Chunk], rate_hz: int, name: str) -> None:
    """float32 mono chunks whose start_sample runs on without gaps and whose times never go back."""
    expected_start = 0
    for c in chunks:
        assert c.samples.dtype == np.float32 and c.samples.ndim == 1 and len(c.samples) > 0
        assert c.rate_hz == rate_hz and c.source == name
        assert c.start_sample == expected_start
        expected_start += len(c.samples)
    times = [c.capture_time for c in chunks]
    assert times == sorted(times)


@pytest.fixture(scope="module")
def speech_16k() -> np.ndarray:
    """A short spoken phrase at 16 kHz."""
    return recording(["turn on the kitchen light"], rate_hz=16000, lead_s=0.2, gap_s=0.3).samples


# --- WAV replay -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_ms", [7, 100, 1000])
def test_wav_chunks_cover_the_file_exactly(tmp_path: Path, speech_16k: np.ndarray, chunk_ms):
    path = tmp_path / "speech.wav"
    sf.write(path, speech_16k, 16000, subtype="PCM_16")
    source = WavSource(path, chunk_ms=chunk_ms)
    source.open()
    try:
        assert source.rate_hz == 16000
        chunks = drain(source)
        with pytest.raises(EndOfStream):  # and it stays ended
            source.read(READ_TIMEOUT_S)
    finally:
        source.close()
    whole, _ = read_wav(path)
    assert_contiguous(chunks, 16000, f"wav:{path}")
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), whole)
    frames_per_chunk = round(16000 * chunk_ms / 1000)
    assert all(len(c.samples) == frames_per_chunk for c in chunks[:-1])
    assert source.stats()["frames_captured"] == len(whole)


@pytest.mark.parametrize(
    ("rate_hz", "channels", "subtype", "tolerance"),
    [
        (44100, 2, "PCM_16", 1 / 2**15),
        (22050, 1, "PCM_24", 1 / 2**23),
        (48000, 2, "FLOAT", 0.0),
        (8000, 1, "PCM_U8", 1 / 2**7),
        (11025, 3, "PCM_32", 1 / 2**31),
    ],
)
def test_wav_formats_read_as_mono_float32(
    tmp_path: Path, speech_16k: np.ndarray, rate_hz, channels, subtype, tolerance
):
    mono = speech_16k[: rate_hz // 2] * 0.8  # half a second, clear of clipping
    # Channels at different gains, so the downmix is really their mean.
    gains = np.array([1.0, 0.5, 0.25][:channels], np.float32)
    frames = mono[:, None] * gains
    path = tmp_path / f"x_{subtype}.wav"
    sf.write(path, frames, rate_hz, subtype=subtype)
    source = WavSource(path, chunk_ms=30)
    source.open()
    try:
        chunks = drain(source)
    finally:
        source.close()
    assert source.rate_hz == rate_hz
    assert_contiguous(chunks, rate_hz, f"wav:{path}")
    got = np.concatenate([c.samples for c in chunks])
    np.testing.assert_array_equal(got, read_wav(path)[0])
    # Quantisation of the subtype, plus float32 rounding of the downmix.
    np.testing.assert_allclose(got, mono * gains.mean(), atol=tolerance + 1e-6)


def test_wav_realtime_is_paced_and_honours_the_timeout(tmp_path: Path, speech_16k: np.ndarray):
    audio = speech_16k[:16000]  # one second
    path = tmp_path / "speech.wav"
    sf.write(path, audio, 16000)
    source = WavSource(path, realtime=True, chunk_ms=100)
    started = time.monotonic()
    source.open()
    try:
        # The first 100 ms chunk is not due yet: a short timeout comes back empty-handed.
        assert source.read(0.01) is None
        chunks = drain(source)
    finally:
        source.close()
    elapsed_s = time.monotonic() - started
    assert elapsed_s >= 0.9 * len(audio) / 16000
    assert_contiguous(chunks, 16000, f"wav:{path}")
    assert sum(len(c.samples) for c in chunks) == len(audio)


def test_wav_with_no_frames_ends_at_once(tmp_path: Path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    source = WavSource(path)
    source.open()
    with pytest.raises(EndOfStream):
        source.read(READ_TIMEOUT_S)
    source.close()
    source.close()  # twice is fine


def test_bad_files_raise_one_clear_line(tmp_path: Path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    empty = tmp_path / "zero_bytes.wav"
    empty.write_bytes(b"")
    for path in [tmp_path / "missing.wav", tmp_path, garbage, empty]:
        source = WavSource(path)
        with pytest.raises(AudioFileError) as err:
            source.open()
        message = str(err.value)
        assert str(path) in message and "\n" not in message


# --- Microphone capture through PortAudio and an ALSA file PCM --------------------------------


def capture(source: MicSource, frames: int) -> list[Chunk]:
    """Read chunks until at least `frames` samples arrived (or fail if capture stalls)."""
    chunks: list[Chunk] = []
    got = 0
    deadline = time.monotonic() + frames / source.rate_hz + CAPTURE_SLACK_S
    while got < frames:
        assert time.monotonic() < deadline, f"capture stalled after {got} of {frames} frames"
        chunk = source.read(READ_TIMEOUT_S)
        if chunk is not None:
            chunks.append(chunk)
            got += len(chunk.samples)
    return chunks


def speech_device(tmp_path: Path, rate_hz: int, channels: int) -> AlsaFileDevice:
    """An ALSA capture device playing a spoken phrase, a different gain on each channel."""
    mono = recording(["what time is it"], rate_hz=rate_hz, lead_s=0.1, gap_s=0.1).samples
    gains = np.array([0.9, 0.45][:channels], np.float32)
    pcm = np.round(mono[:, None] * gains * 32767).astype(np.int16)
    device = alsa_file_device(tmp_path, pcm, rate_hz)
    use_in_process(device)
    return device


def test_mic_captures_a_48k_stereo_device_by_name_at_its_own_rate(tmp_path: Path):
    device = speech_device(tmp_path, rate_hz=48000, channels=2)
    source = MicSource("TEST_MIC")  # case-insensitive substring of intentd_test_mic
    source.open()
    try:
        # Rate and channels come from the device as declared, not from arguments.
        assert (source.rate_hz, source.channels) == (48000, 2)
        assert source.device_name == device.name
        chunks = capture(source, device.frames)
        stats = source.stats()
    finally:
        source.close()
    assert_contiguous(chunks, 48000, "mic:TEST_MIC")
    got = np.concatenate([c.samples for c in chunks])[: device.frames]
    np.testing.assert_allclose(got, to_mono_float32(device.samples), atol=1e-6)
    assert stats["queue_drops"] == 0 and stats["frames_captured"] >= device.frames


def test_mic_captures_a_16k_mono_device_by_index_and_goes_silent_after_the_end(tmp_path: Path):
    device = speech_device(tmp_path, rate_hz=16000, channels=1)
    index = next(d.index for d in list_input_devices() if d.name == device.name)
    source = MicSource(index, rate_hz=16000, channels=1, blocksize_ms=10)
    source.open()
    try:
        assert source.rate_hz == 16000
        # Past the end of the infile the device plays its silent padding.
        chunks = capture(source, device.frames + 16000 // 2)
    finally:
        source.close()
    assert_contiguous(chunks, 16000, f"mic:{index}")
    got = np.concatenate([c.samples for c in chunks])
    np.testing.assert_allclose(got[: device.frames], to_mono_float32(device.samples), atol=1e-6)
    assert np.abs(got[device.frames :]).max() == 0.0


def test_mic_capture_is_paced_like_a_microphone(tmp_path: Path):
    device = speech_device(tmp_path, rate_hz=16000, channels=1)
    source = MicSource(device.name, channels=1)
    source.open()
    started = time.monotonic()
    try:
        capture(source, 16000 * 2)
    finally:
        source.close()
    # Two seconds of audio take about two seconds (less the initial burst), not milliseconds.
    assert time.monotonic() - started >= 1.0


def test_unknown_mic_lists_the_input_devices(tmp_path: Path):
    device = speech_device(tmp_path, rate_hz=16000, channels=1)
    source = MicSource("no such microphone")
    with pytest.raises(AudioDeviceError) as err:
        source.open()
    message = str(err.value)
    assert "no such microphone" in message and device.name in message and "\n" not in message
    with pytest.raises(AudioDeviceError):
        MicSource(999).open()


def test_mic_refuses_a_rate_no_microphone_has_as_a_device_error(tmp_path: Path):
    device = speech_device(tmp_path, rate_hz=16000, channels=1)
    with pytest.raises(AudioDeviceError, match="sample rate 500 Hz is outside"):
        MicSource(device.name, rate_hz=500, channels=1).open()


def test_mic_reports_a_stream_that_stops_by_itself(tmp_path: Path):
    import sounddevice as sd

    device = speech_device(tmp_path, rate_hz=16000, channels=1)
    source = MicSource(device.name, channels=1)
    source.open()
    try:
        assert source.read(READ_TIMEOUT_S) is not None
        assert not source.device_lost
        # Shutting PortAudio down under the stream ends it the way an unplugged device does:
        # no close() from us, the stream simply finishes.
        sd._terminate()
        with pytest.raises(AudioDeviceError) as err:
            while True:
                source.read(READ_TIMEOUT_S)
        assert source.device_lost
        assert "stopped unexpectedly" in str(err.value)
    finally:
        source.close()
        sd._initialize()


def test_a_stalled_consumer_loses_the_oldest_audio_counted_and_recovers(tmp_path: Path):
    """Overload policy: a bounded capture queue drops its oldest blocks, counts them, and resumes live."""
    speech_device(tmp_path, rate_hz=16000, channels=1)
    source = MicSource("intentd_test_mic", blocksize_ms=20, queue_max_chunks=10)
    source.open()
    try:
        time.sleep(1.5)  # the pipeline behind the source is too slow: nobody reads for 75 blocks
        backlog = []
        while (c := source.read(0.0)) is not None:
            backlog.append(c)
        stalled = source.stats()
        # Memory stays at the bound, the loss is counted, and what is kept is the newest audio.
        assert len(backlog) <= 10
        assert stalled["queue_drops"] >= 40
        newest_end = backlog[-1].start_sample + backlog[-1].samples.size
        assert newest_end >= stalled["frames_captured"] - 2 * 320
        assert backlog[0].start_sample >= 16000  # the first second was dropped, not kept
        # Once the consumer keeps up again, loss stops (the file device may still deliver one
        # burst of a few blocks at once right after the stall).
        capture(source, 16000)
        mid = source.stats()["queue_drops"]
        assert mid - stalled["queue_drops"] <= 3
        capture(source, 16000)
        assert source.stats()["queue_drops"] == mid
    finally:
        source.close()
