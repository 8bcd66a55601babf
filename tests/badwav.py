"""A corpus of malformed and odd audio files, built byte by byte, for the bad-input tests.

Each entry says how the file is made and what intentd must do with it: "error" (one line naming
the file, exit 2), "ok" (decoded; classify prints a JSON line) or "empty" (a well-formed file with
no samples: replay publishes nothing and exits 0, classify refuses it).
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf

Outcome = Literal["error", "ok", "empty"]

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
RATE_HZ = 16000
TONE_HZ = 440.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
U32_MAX = 0xFFFFFFFF
HOUR_S = 3600
HOUR_RATE_HZ = 8000


@dataclass(frozen=True)
class BadWav:
    """One corpus entry: a file name, how to make it, and what intentd must do with it."""

    name: str
    make: Callable[[Path], None]  # writes (or links, or omits) the file at the given path
    outcome: Outcome
    what: str  # how the file is odd, for the docs table
    reason: str = ""  # a word the error line must contain besides the file name
    classify_error: str = ""  # for a readable file `classify` still refuses: a word of its error

    @property
    def classify_outcome(self) -> Outcome:
        """What `intentd classify` must do: it refuses files without samples too."""
        return "error" if self.outcome == "empty" or self.classify_error else self.outcome


def tone(n: int, rate_hz: int = RATE_HZ, amplitude: float = 0.5) -> np.ndarray:
    """`n` samples of a sine, float32."""
    t = np.arange(n, dtype=np.float64) / rate_hz
    return (amplitude * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def pcm16(n: int, rate_hz: int = RATE_HZ) -> bytes:
    """`n` frames of a tone as little-endian int16 PCM."""
    return (tone(n, rate_hz) * 32767).astype("<i2").tobytes()


def chunk(tag: bytes, body: bytes, size: int | None = None) -> bytes:
    """A RIFF chunk, padded to even length; `size` may lie about the body's length."""
    pad = b"\x00" if len(body) % 2 else b""
    return tag + struct.pack("<I", len(body) if size is None else size) + body + pad


def fmt_body(
    fmt_tag: int = WAVE_FORMAT_PCM,
    channels: int = 1,
    rate_hz: int = RATE_HZ,
    bits: int = 16,
    byte_rate: int | None = None,
    block_align: int | None = None,
) -> bytes:
    """The 16-byte WAVEFORMAT body; byte rate and block align follow from the rest unless given."""
    if block_align is None:
        block_align = (channels * ((bits + 7) // 8)) & 0xFFFF
    if byte_rate is None:
        byte_rate = (rate_hz * block_align) & U32_MAX
    return struct.pack("<HHIIHH", fmt_tag, channels, rate_hz, byte_rate, block_align, bits)


def wav(
    data: bytes,
    fmt: bytes | None = None,
    riff_size: int | None = None,
    data_size: int | None = None,
    fmt_size: int | None = None,
    before_data: bytes = b"",
) -> bytes:
    """A RIFF/WAVE file; every size field may be made to lie."""
    fmt = fmt_body() if fmt is None else fmt
    body = b"WAVE" + chunk(b"fmt ", fmt, fmt_size) + before_data + chunk(b"data", data, data_size)
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def valid_wav(seconds: float = 0.5) -> bytes:
    """A plain 16 kHz 16-bit mono tone."""
    return wav(pcm16(int(seconds * RATE_HZ)))


def write(data: bytes) -> Callable[[Path], None]:
    """A maker that writes these bytes."""
    return lambda p: p.write_bytes(data)


def with_soundfile(
    samples: np.ndarray, rate_hz: int, format: str = "WAV", subtype: str | None = None
) -> Callable[[Path], None]:
    """A maker that writes audio with soundfile (libsndfile)."""
    return lambda p: sf.write(str(p), samples, rate_hz, format=format, subtype=subtype)


def float_wav(values: list[float]) -> Callable[[Path], None]:
    """A 32-bit float WAV holding exactly these sample values (NaN and Inf included)."""
    data = np.asarray(values, "<f4").tobytes()
    return write(wav(data, fmt_body(WAVE_FORMAT_IEEE_FLOAT, bits=32)))


def hour_of_silence(path: Path) -> None:
    """An hour of 8 kHz 16-bit silence (57.6 MB) written as a sparse file: only the header is real."""
    n_bytes = HOUR_S * HOUR_RATE_HZ * 2
    header = wav(b"", fmt_body(rate_hz=HOUR_RATE_HZ), data_size=n_bytes)
    with path.open("wb") as f:
        f.write(header)
        f.truncate(len(header) + n_bytes)


def flac_cut_in_half(path: Path) -> None:
    """A FLAC file whose second half is missing."""
    tmp = path.with_suffix(".whole")
    sf.write(str(tmp), tone(RATE_HZ), RATE_HZ, format="FLAC")
    data = tmp.read_bytes()
    tmp.unlink()
    path.write_bytes(data[: len(data) // 2])


def mp3_by_ffmpeg(path: Path) -> None:
    """A 1 s MP3 encoded by ffmpeg (a make-setup package).

    Not by soundfile: libsndfile 1.2.2's own MP3 writer makes files that its decoder reads
    differently in small blocks than whole (libmpg123 "part2_3_length too large" on stderr).
    """
    wav_path = path.with_suffix(".src.wav")
    wav_path.write_bytes(valid_wav(1.0))
    cmd = ["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav_path), "-codec:a", "libmp3lame", str(path)]
    subprocess.run(cmd, check=True, timeout=60)
    wav_path.unlink()


def random_bytes(n: int, seed: int, prefix: bytes = b"") -> Callable[[Path], None]:
    """A maker that writes `prefix` then `n` seeded random bytes."""
    return write(prefix + np.random.default_rng(seed).bytes(n))


def directory(path: Path) -> None:
    """A directory where a file is expected."""
    path.mkdir()


def nothing(path: Path) -> None:
    """A path that does not exist."""


def symlink_loop(path: Path) -> None:
    """A symlink that points at itself."""
    path.symlink_to(path.name)


def fifo(path: Path) -> None:
    """A named pipe with no writer: opening it for reading would block forever."""
    os.mkfifo(path)


def link_to(target: str) -> Callable[[Path], None]:
    """A maker that symlinks the path to `target`."""
    return lambda p: p.symlink_to(target)


def link_to_good(path: Path) -> None:
    """A symlink to a valid WAV next to it."""
    target = path.with_name(path.name + ".target.wav")
    target.write_bytes(valid_wav())
    path.symlink_to(target.name)


def flac_claiming_frames(path: Path) -> None:
    """A 1 s FLAC whose STREAMINFO claims 2**36 - 1 frames (256 GiB as float32)."""
    sf.write(str(path), tone(RATE_HZ), RATE_HZ, format="FLAC")
    data = bytearray(path.read_bytes())
    # "fLaC", a 4-byte block header, then STREAMINFO; its total-samples field is the low 36 bits
    # of the big-endian 64-bit word at byte 18 (after rate, channels and bits per sample).
    word = int.from_bytes(data[18:26], "big") | ((1 << 36) - 1)
    data[18:26] = word.to_bytes(8, "big")
    path.write_bytes(bytes(data))


def _truncated(n: int) -> BadWav:
    # Cut inside the data chunk's size field, libsndfile finds a data chunk with no samples.
    outcome: Outcome = "empty" if n >= 40 else "error"
    return BadWav(f"truncated_{n}.wav", write(valid_wav()[:n]), outcome, f"a valid WAV cut at {n} bytes")


def _silly_rate(rate_hz: int) -> BadWav:
    # libsndfile itself refuses 0 Hz and rates past 2**31 ("SF_INFO struct incomplete").
    return BadWav(
        f"rate_{rate_hz}.wav",
        write(wav(pcm16(RATE_HZ // 10), fmt_body(rate_hz=rate_hz))),
        "error",
        f"header rate {rate_hz} Hz, 0.1 s of samples",
        "rate" if 0 < rate_hz < 1 << 31 else "",
    )


STEREO = np.stack([tone(RATE_HZ), tone(RATE_HZ, amplitude=0.25)], axis=1)


# fmt: off
CORPUS: list[BadWav] = [
    # --- not audio at all ----------------------------------------------------------------------
    BadWav("empty.wav", write(b""), "error", "0 bytes"),
    BadWav("text.wav", write(b"this is not audio\n" * 20), "error", "a text file"),
    BadWav("png.wav", random_bytes(512, 1, PNG_MAGIC), "error", "PNG magic + 512 random bytes"),
    BadWav("random.wav", random_bytes(4096, 2), "error", "4 KiB of random bytes"),
    BadWav("riff_random.wav", random_bytes(4096, 3, b"RIFF\xff\xff\xff\xffWAVE"), "error",
           "RIFF/WAVE magic + random bytes"),
    BadWav("ogg_garbage.ogg", random_bytes(4096, 4, b"OggS\x00\x02"), "error", "OggS magic + random bytes"),
    BadWav("flac_garbage.flac", random_bytes(4096, 5, b"fLaC\x00\x00\x00\x22"), "error",
           "fLaC magic + random bytes"),
    BadWav("mp3_garbage.mp3", random_bytes(4096, 6, b"ID3\x04\x00\x00\x00\x00\x00\x00"), "error",
           "ID3 tag + random bytes"),
    # --- not a regular file ------------------------------------------------------------------
    BadWav("a_directory.wav", directory, "error", "a directory", "directory"),
    BadWav("missing.wav", nothing, "error", "no such path", "no such file"),
    BadWav("symlink_loop.wav", symlink_loop, "error", "a symlink to itself"),
    BadWav("fifo.wav", fifo, "error", "a named pipe with no writer (would block a reader)", "regular"),
    BadWav("dev_zero.wav", link_to("/dev/zero"), "error", "a symlink to /dev/zero (endless)", "regular"),
    # --- broken structure --------------------------------------------------------------------
    *(_truncated(n) for n in (4, 12, 20, 36, 43)),
    BadWav("no_fmt_chunk.wav", write(b"RIFF\x1c\x00\x00\x00WAVE" + chunk(b"data", pcm16(8))), "error",
           "RIFF/WAVE with a data chunk and no fmt chunk"),
    BadWav("huge_fmt_chunk.wav", write(wav(pcm16(1600), fmt_size=0xFFFFFFF0)), "error",
           "fmt chunk size 0xFFFFFFF0"),
    BadWav("channels_0.wav", write(wav(pcm16(1600), fmt_body(channels=0))), "error", "0 channels"),
    BadWav("channels_65535.wav", write(wav(pcm16(1600), fmt_body(channels=65535))), "error",
           "65535 channels, 3.2 kB of data"),
    *(_silly_rate(r) for r in (0, 1, 999, 384_001, 4_000_000_000)),
    BadWav("format_0x1234.wav", write(wav(pcm16(1600), fmt_body(fmt_tag=0x1234))), "error",
           "unknown format tag 0x1234"),
    BadWav("bits_0.wav", write(wav(pcm16(1600), fmt_body(bits=0, block_align=2))), "error",
           "0 bits per sample"),
    BadWav("bits_7.wav", write(wav(pcm16(1600), fmt_body(bits=7, block_align=1))), "ok",
           "7 bits per sample, block align 1 (legal: 7 valid bits in 8-bit containers)"),
    BadWav("float_nan.wav", float_wav([0.1, float("nan"), 0.1] * 100), "error", "float32 with NaN samples",
           "NaN"),
    BadWav("float_inf.wav", float_wav([0.1, float("inf"), -float("inf")] * 100), "error",
           "float32 with ±Inf samples", "NaN or infinite"),
    BadWav("flac_cut_in_half.flac", flac_cut_in_half, "error", "1 s FLAC, second half missing"),
    BadWav("bad\nname.wav", write(b"not audio\n"), "error",
           "file name with a newline (one error line even so)"),
    # --- lying sizes that streaming writers really produce -------------------------------------
    BadWav("sizes_4gib.wav", write(wav(pcm16(RATE_HZ), riff_size=U32_MAX, data_size=U32_MAX)), "ok",
           "RIFF and data sizes 0xFFFFFFFF (claims 4 GiB), 1 s of data"),
    BadWav("flac_claims_2e36_frames.flac", flac_claiming_frames, "error",
           "1 s FLAC whose STREAMINFO claims 2**36-1 frames (256 GiB as float32)", "decode"),
    BadWav("sizes_0.wav", write(wav(pcm16(RATE_HZ), riff_size=0, data_size=0)), "empty",
           "RIFF and data sizes 0, 1 s of data after them"),
    BadWav("data_short.wav", write(wav(pcm16(RATE_HZ // 2), data_size=RATE_HZ * 2)), "ok",
           "data size says 1 s, 0.5 s present"),
    BadWav("odd_data_length.wav", write(wav(pcm16(RATE_HZ // 2) + b"\x7f")), "ok",
           "16-bit data chunk of odd length (half a sample at the end)"),
    # --- valid but odd -----------------------------------------------------------------------
    BadWav("header_only.wav", write(wav(b"")), "empty", "a valid header and 0 samples"),
    BadWav("pcm24.wav", with_soundfile(tone(RATE_HZ), RATE_HZ, subtype="PCM_24"), "ok", "24-bit PCM"),
    BadWav("pcm_u8.wav", with_soundfile(tone(RATE_HZ), RATE_HZ, subtype="PCM_U8"), "ok",
           "8-bit unsigned PCM"),
    BadWav("float32.wav", with_soundfile(tone(RATE_HZ), RATE_HZ, subtype="FLOAT"), "ok", "32-bit float"),
    BadWav("float64.wav", with_soundfile(tone(RATE_HZ), RATE_HZ, subtype="DOUBLE"), "ok", "64-bit float"),
    BadWav("float_loud.wav", float_wav([10.0, -10.0, 1e-40] * 5000), "ok",
           "float32 at ±10 (far past full scale) and denormals"),
    BadWav("stereo_44k.wav", with_soundfile(np.repeat(STEREO, 3, axis=0)[:44100], 44100), "ok",
           "stereo 44.1 kHz"),
    BadWav("ch6_48k.wav", with_soundfile(np.tile(tone(48000)[:, None], (1, 6)), 48000), "ok",
           "6 channels 48 kHz"),
    BadWav("ch1024.wav", with_soundfile(np.zeros((100, 1024), np.float32), 16000, subtype="PCM_16"), "ok",
           "1024 channels (libsndfile's maximum), 100 frames"),
    BadWav("one_sample.wav", with_soundfile(np.array([0.5], np.float32), RATE_HZ), "ok", "one sample"),
    BadWav("five_ms.wav", with_soundfile(tone(80), RATE_HZ), "ok", "5 ms"),
    BadWav("rate_1000.wav", with_soundfile(tone(1000, 1000), 1000), "ok", "1 kHz (the lowest rate taken)"),
    BadWav("rate_384000.wav", with_soundfile(tone(38400, 384000), 384000), "ok",
           "384 kHz (the highest rate taken)"),
    BadWav("list_chunk.wav", write(wav(pcm16(RATE_HZ), before_data=chunk(b"LIST", b"INFOISFT" + b"x" * 501))),
           "ok", "a LIST chunk of odd length before data"),
    BadWav("wavex.wav", with_soundfile(STEREO, RATE_HZ, format="WAVEX"), "ok", "WAVE_FORMAT_EXTENSIBLE"),
    BadWav("rf64.wav", with_soundfile(tone(RATE_HZ), RATE_HZ, format="RF64"), "ok", "RF64"),
    BadWav("tone.flac", with_soundfile(tone(RATE_HZ), RATE_HZ, format="FLAC"), "ok", "FLAC"),
    BadWav("tone.ogg", with_soundfile(tone(RATE_HZ), RATE_HZ, format="OGG", subtype="VORBIS"), "ok",
           "Ogg Vorbis"),
    BadWav("tone.mp3", mp3_by_ffmpeg, "ok", "MP3 (encoded by ffmpeg/LAME)"),
    BadWav("tone.aiff", with_soundfile(tone(RATE_HZ), RATE_HZ, format="AIFF"), "ok", "AIFF"),
    BadWav("symlink_to_good.wav", link_to_good, "ok", "a symlink to a valid WAV"),
    BadWav("name with spaces ü.wav", write(valid_wav()), "ok", "spaces and non-ASCII in the name"),
]
# fmt: on

# Built only where a test asks for it: 57.6 MB (sparse on disk) and minutes of model time.
HOUR = BadWav(
    "hour_silence_8k.wav",
    hour_of_silence,
    "ok",
    "an hour of 8 kHz 16-bit silence (sparse file)",
    classify_error="longer than",
)


def build(directory: Path, entries: list[BadWav] | None = None) -> dict[str, Path]:
    """Make every entry's file under `directory`; name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for entry in CORPUS if entries is None else entries:
        path = directory / entry.name
        entry.make(path)
        paths[entry.name] = path
    return paths


def by_name(name: str) -> BadWav:
    """The corpus entry called `name`."""
    return next(e for e in [*CORPUS, HOUR] if e.name == name)
