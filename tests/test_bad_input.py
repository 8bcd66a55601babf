"""Malformed and odd audio files (tests/badwav.py) through read_wav, WavSource, `classify` and `replay`.

Every file goes through the in-process readers; `classify` takes the whole corpus in one call;
`replay` runs per file for a representative subset. A bad file must give exactly one stderr line
naming it, exit 2 and no traceback, within a time limit and an address-space limit.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import badwav
import numpy as np
import pytest
from badwav import CORPUS, HOUR, BadWav
from conftest import INTENTD

from intentd.audio import MAX_RATE_HZ, MIN_RATE_HZ, read_wav
from intentd.errors import AudioFileError
from intentd.sources import EndOfStream, WavSource
from intentd.vad import Segmenter, VadConfig

# In-process reads of the corpus (none over 2 s of audio) finish at once; this only catches a hang.
READ_DEADLINE_S = 5.0
# A file's decoded audio is at most ~4 MB here; a header-sized buffer would be GiBs.
READ_PEAK_BYTES = 32 << 20
# Each CLI call imports torch (~4-7 s on a busy 2-core box); far beyond that is a hang.
CLI_TIMEOUT_S = 120.0
# CPU torch plus the tiny model run in ~1 GiB of address space (measured); a buffer sized by a
# lying header (256 GiB for the FLAC below) fails under this limit instead of swapping.
CLI_ADDRESS_SPACE_BYTES = 3 << 30
CLI_PEAK_RSS_BYTES = 1536 << 20
# An hour of 8 kHz silence through WavSource and the segmenter took 2.3 s here.
HOUR_DEADLINE_S = 60.0
SMALL_CHUNK_MS = 20


def ident(entry: BadWav) -> str:
    """A pytest id without control characters."""
    return entry.name.replace("\n", "\\n")


def shown(path: Path) -> str:
    """How a path appears in an error line (the corpus' only control character is a newline)."""
    return str(path).replace("\n", "\\n")


class Hung(BaseException):
    """A read outlived its deadline (BaseException, so no `except OSError` in the code can hide it)."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise Hung in the main thread if the block runs longer than `seconds`."""

    def on_alarm(_signum: int, _frame: object) -> None:
        raise Hung(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextmanager
def traced_peak() -> Iterator[list[int]]:
    """Peak bytes Python and numpy allocated inside the block, appended to the yielded list."""
    tracemalloc.start()
    peak: list[int] = []
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def assert_error_line(message: str, path: Path, entry: BadWav, reason: str | None = None) -> None:
    """One line that starts with the file's name and says why."""
    assert "\n" not in message, message
    assert message.startswith(f"{shown(path)}: "), message
    assert (entry.reason if reason is None else reason) in message, message


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every corpus file, made once."""
    return badwav.build(tmp_path_factory.mktemp("badwav"))


@pytest.fixture(scope="module")
def hour_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An hour of 8 kHz silence (sparse, so cheap on disk)."""
    return badwav.build(tmp_path_factory.mktemp("hour"), [HOUR])[HOUR.name]


def test_corpus_covers_enough_cases() -> None:
    names = [e.name for e in CORPUS]
    assert len(names) == len(set(names)) >= 40
    assert sum(e.outcome == "error" for e in CORPUS) >= 25
    assert sum(e.outcome == "ok" for e in CORPUS) >= 15


# --- in process: every file -------------------------------------------------------------------


@pytest.mark.parametrize("entry", CORPUS, ids=ident)
def test_read_wav(corpus: dict[str, Path], entry: BadWav) -> None:
    path = corpus[entry.name]
    with deadline(READ_DEADLINE_S), traced_peak() as peak:
        if entry.outcome == "error":
            with pytest.raises(AudioFileError) as err:
                read_wav(path)
            assert_error_line(str(err.value), path, entry)
        else:
            samples, rate_hz = read_wav(path)
            assert samples.dtype == np.float32 and samples.ndim == 1
            assert np.isfinite(samples).all()
            assert MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ
            assert (samples.size == 0) == (entry.outcome == "empty")
    assert peak[0] < READ_PEAK_BYTES


def drain(source: WavSource) -> list[np.ndarray]:
    """Every chunk's samples up to EndOfStream, checking that they run on without gaps."""
    out: list[np.ndarray] = []
    pos = 0
    while True:
        try:
            chunk = source.read(1.0)
        except EndOfStream:
            return out
        assert chunk is not None and chunk.start_sample == pos and chunk.samples.size > 0
        assert chunk.samples.dtype == np.float32 and np.isfinite(chunk.samples).all()
        pos += chunk.samples.size
        out.append(chunk.samples)


# libsndfile 1.2.2 (soundfile's bundled copy) decodes some MP3s differently when read in small
# blocks than whole, and libmpg123 prints "part2_3_length too large" on stderr: replay and
# classify then see different audio. Reported; the test flips when it is fixed or MP3 refused.
STREAMS_UNLIKE_WHOLE = {"tone.mp3"}
WAV_SOURCE_CASES = [
    pytest.param(
        e,
        id=ident(e),
        marks=[pytest.mark.xfail(strict=True, reason="libsndfile MP3 chunked decoding")]
        if e.name in STREAMS_UNLIKE_WHOLE
        else [],
    )
    for e in CORPUS
]


@pytest.mark.parametrize("entry", WAV_SOURCE_CASES)
def test_wav_source(corpus: dict[str, Path], entry: BadWav) -> None:
    path = corpus[entry.name]
    source = WavSource(path, chunk_ms=SMALL_CHUNK_MS)
    with deadline(READ_DEADLINE_S), traced_peak() as peak:
        try:
            if entry.outcome == "error":
                # Refused at open(), or mid-stream after what decoded cleanly was delivered.
                with pytest.raises(AudioFileError) as err:
                    source.open()
                    drain(source)
                assert_error_line(str(err.value), path, entry)
            else:
                source.open()
                streamed = drain(source)
                whole, rate_hz = read_wav(path)
                assert source.rate_hz == rate_hz
                got = np.concatenate(streamed) if streamed else np.zeros(0, np.float32)
                np.testing.assert_array_equal(got, whole)
        finally:
            source.close()
    assert peak[0] < READ_PEAK_BYTES


def drain_lazily(source: WavSource) -> Iterator[np.ndarray]:
    """Chunks one at a time, so a long file is never held whole."""
    while True:
        try:
            chunk = source.read(1.0)
        except EndOfStream:
            return
        if chunk is not None:
            yield chunk.samples


def test_hour_of_silence_streams_in_bounded_time_and_memory(hour_wav: Path) -> None:
    source = WavSource(hour_wav)
    source.open()
    segmenter = Segmenter(VadConfig(), source.rate_hz, source.name)
    frames = 0
    segments = []
    started = time.monotonic()
    # No tracemalloc here: it slows the 36,000 chunks five-fold; the buffer bound says enough.
    with deadline(HOUR_DEADLINE_S):
        for samples in drain_lazily(source):
            frames += samples.size
            segments += segmenter.process(samples)
            assert segmenter.buffered_samples <= source.rate_hz  # the pre-roll, not the hour
        segments += segmenter.flush()
    source.close()
    assert frames == badwav.HOUR_S * badwav.HOUR_RATE_HZ and segments == []
    print(f"an hour of silence streamed and segmented in {time.monotonic() - started:.1f} s")


def test_read_wav_stops_at_max_s(hour_wav: Path) -> None:
    with deadline(READ_DEADLINE_S), traced_peak() as peak, pytest.raises(AudioFileError) as err:
        read_wav(hour_wav, max_s=60)
    assert_error_line(str(err.value), hour_wav, HOUR, "longer than 60 s")
    assert peak[0] < READ_PEAK_BYTES


# --- the CLI ---------------------------------------------------------------------------------


def limit_address_space() -> None:
    """preexec_fn: cap the child's address space so a runaway allocation fails, not swaps."""
    resource.setrlimit(resource.RLIMIT_AS, (CLI_ADDRESS_SPACE_BYTES, CLI_ADDRESS_SPACE_BYTES))


def intentd(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI with a time and an address-space limit."""
    r = subprocess.run(
        [str(INTENTD), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
        preexec_fn=limit_address_space,
    )
    assert "Traceback" not in r.stderr, r.stderr
    # The largest child so far: every CLI call in this session stayed under it.
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 < CLI_PEAK_RSS_BYTES
    return r


def test_classify_whole_corpus_in_one_call(corpus: dict[str, Path], hour_wav: Path, tiny_model: Path) -> None:
    entries = [*CORPUS, HOUR]
    paths = {**corpus, HOUR.name: hour_wav}
    r = intentd("classify", *(paths[e.name] for e in entries), "--model", tiny_model, "--device", "cpu")
    assert r.returncode == 2
    errors = r.stderr.splitlines()
    bad = [e for e in entries if e.classify_outcome == "error"]
    assert len(errors) == len(bad), r.stderr
    for entry in bad:
        path = paths[entry.name]
        lines = [x for x in errors if x.startswith(f"intentd: error: {shown(path)}: ")]
        assert len(lines) == 1, (entry.name, r.stderr)
        word = entry.classify_error or ("no audio samples" if entry.outcome == "empty" else entry.reason)
        assert word in lines[0], lines[0]
    # Nothing accepted is lost: every good file has its line, in the order given.
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["path"] for x in results] == [str(paths[e.name]) for e in entries if e.classify_outcome == "ok"]
    assert all(0.0 <= x["score"] <= 1.0 and len(x["top_k"]) == 3 for x in results)


REPLAY_SUBSET = [
    "empty.wav",  # refused by libsndfile at open
    "fifo.wav",  # would block a reader forever
    "bad\nname.wav",  # a newline in the name must not make two lines
    "rate_4000000000.wav",  # a rate libsndfile itself refuses
    "header_only.wav",  # no samples: nothing to publish, exit 0
    "float_nan.wav",  # fails mid-stream, on the audio thread
    "flac_claims_2e36_frames.flac",  # decodes 0.9 s, then fails; the 0.9 s is still published
]


@pytest.mark.parametrize("name", REPLAY_SUBSET, ids=lambda n: n.replace("\n", "\\n"))
def test_replay(corpus: dict[str, Path], tiny_model: Path, name: str) -> None:
    entry = badwav.by_name(name)
    path = corpus[name]
    r = intentd("replay", path, "--model", tiny_model, "--device", "cpu")
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert all(e["type"] == "intent" for e in events)
    if entry.outcome == "error":
        assert r.returncode == 2
        assert len(r.stderr.splitlines()) == 1, r.stderr
        assert r.stderr.startswith("intentd: error: ")
        assert_error_line(r.stderr.strip().removeprefix("intentd: error: "), path, entry)
    else:
        assert r.returncode == 0, r.stderr
        assert entry.outcome != "empty" or events == []


def test_replay_an_hour_of_silence(hour_wav: Path, tiny_model: Path) -> None:
    started = time.monotonic()
    r = intentd("replay", hour_wav, "--model", tiny_model, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    print(f"replay of an hour of silence took {time.monotonic() - started:.1f} s")


def test_send_refuses_every_broken_file_with_one_line_each(corpus: dict[str, Path], tmp_path: Path) -> None:
    """`intentd send` (its own reader, in the client package) on the broken files, no daemon needed.

    Files refused at open fail before any network traffic; the rest would need a daemon's answer
    and fail on the 1 s timeout instead: one line each either way, never a hang.
    """
    bad = [e for e in CORPUS if e.outcome == "error"]
    paths = [corpus[e.name] for e in bad]
    to = f"ipc://{tmp_path}/no-daemon.sock"
    r = subprocess.run(
        [str(INTENTD), "send", *map(str, paths), "--to", to, "--timeout", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    # (libmpg123 itself prints warnings for the MP3 garbage; those lines are not ours.)
    ours = [x for x in r.stderr.splitlines() if x.startswith("intentd send: ")]
    assert len(ours) == len(paths), r.stderr
    for path in paths:
        lines = [x for x in ours if f"{shown(path)}:" in x]
        assert len(lines) == 1, (path, r.stderr)
