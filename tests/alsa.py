"""A real ALSA capture device for tests: an asoundrc `file` PCM that plays given samples.

How it works (alsa-lib 1.2.8, PortAudio 19.7 via sounddevice):

    pcm.NAME {                       # what PortAudio lists and MicSource opens
        type plug                    # converts if the client asks another rate/channels
        slave {
            pcm {                    # inline, so PortAudio does not list it as a 2nd device
                type file            # capture reads `infile`, raw interleaved frames
                slave.pcm "null"
                infile "DIR/NAME.raw"
                file "|PYTHON DIR/NAME_pace.py BYTES_PER_S"
                format "raw"
            }
            rate RATE; channels CHANNELS; format S16_LE
        }
    }

Environment: ALSA_CONFIG_PATH=/usr/share/alsa/alsa.conf:DIR/asoundrc (our file is loaded
after the stock config, so the usual devices stay and ours is added).

Findings that shape this file:
- Pacing. The `null` slave has no clock: it is always ready, so PortAudio's capture thread
  would spin through the infile at ~1000x real time and a bounded queue would keep only
  stale blocks. The file plugin also *writes* every captured frame to `file`; here that is a
  pipe to a tiny pacer that reads it at exactly the stream's byte rate (with a 4 KiB pipe), so
  the capture thread blocks on that write and capture runs at real time, after an initial
  burst of about 0.3-0.4 s (pipe plus PortAudio's ring buffer).
  (A FIFO as `infile` with a paced writer does NOT work: the plugin reads with one read() per
  period, and a short read leaves stale frames in the rest of the period.)
- End of infile. Capture does not stop, loop or go silent: read() returns 0 and the plugin
  leaves the ring buffer untouched, so PortAudio keeps delivering the last ring-buffer's worth
  of audio over and over, still paced. `alsa_file_device` therefore appends `pad_s` of
  silence (longer than any ring buffer), so past the end the device delivers silence forever.
- Rate, channels, format. The bare file PCM accepts any parameters and reports 44100 Hz and
  128 channels. Behind `plug` with a fixed slave, PortAudio reports the declared rate as the
  device's default (channels still show 128; MicSource caps its default at 2). But open it
  ONLY at the declared rate, channel count and int16: any conversion plug inserts (float32,
  another rate, mono<->stereo) loses frames, because the file plugin reads the infile for all
  the frames mmap_begin offers while the converter commits fewer. Opened as declared, plug
  converts nothing and the captured frames equal the file's bit for bit. MicSource captures
  int16, and by default at the device's rate and min(channels, 2): so declare stereo, or
  pass channels=1 (`type multi` can pin the advertised channel count, but then the infile is
  never read: silence).
- Device list. PortAudio reads ALSA's device list once, at Pa_Initialize (at
  `import sounddevice`). alsa-lib re-reads its config when ALSA_CONFIG_PATH changes, so in
  the test process `use_in_process()` sets the variable and calls `sd._terminate();
  sd._initialize()` to rescan (with no stream open). A subprocess just gets `device.env`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STOCK_ALSA_CONF = Path("/usr/share/alsa/alsa.conf")
DEFAULT_PAD_S = 2.0
BYTES_PER_SAMPLE = 2  # S16_LE

# Reads stdin (the frames the file plugin captured) at the stream's byte rate, which makes
# the plugin's write, and so PortAudio's capture thread, wait for real time.
PACER_SCRIPT = """\
import fcntl, os, sys, time
bytes_per_s = int(sys.argv[1])
fd = sys.stdin.fileno()
try:
    fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ: keep the burst ahead of real time small
except OSError:
    pass
started = None
got = 0
while True:
    data = os.read(fd, 4096)
    if not data:
        break
    if started is None:
        started = time.monotonic()
    got += len(data)
    wait_s = started + got / bytes_per_s - time.monotonic()
    if wait_s > 0:
        time.sleep(wait_s)
"""


@dataclass(frozen=True)
class AlsaFileDevice:
    """A declared capture device and what a process needs to see it."""

    name: str
    rate_hz: int
    channels: int
    frames: int  # frames of the given samples, before the silent padding
    samples: np.ndarray  # int16, (frames, channels)
    asoundrc: Path
    infile: Path
    env: dict[str, str]  # add to a subprocess's environment

    def subprocess_env(self) -> dict[str, str]:
        """This process's environment plus the device's variables."""
        return {**os.environ, **self.env}


def alsa_file_device(
    directory: Path,
    samples: np.ndarray,
    rate_hz: int,
    name: str = "intentd_test_mic",
    pad_s: float = DEFAULT_PAD_S,
) -> AlsaFileDevice:
    """Write an asoundrc declaring capture PCM `name` that plays int16 `samples` in real time.

    `samples` is `(frames,)` for mono or `(frames, channels)`; `pad_s` of silence follows so
    that capture past the end (which repeats the last ring buffer) hears silence.
    """
    frames = np.asarray(samples)
    if frames.dtype != np.int16:
        raise TypeError(f"samples must be int16, got {frames.dtype}")
    if frames.ndim == 1:
        frames = frames[:, None]
    if frames.ndim != 2 or frames.shape[1] < 1:
        raise ValueError(f"samples must be (frames,) or (frames, channels), got {frames.shape}")
    channels = frames.shape[1]
    directory.mkdir(parents=True, exist_ok=True)
    infile = directory / f"{name}.raw"
    pad = np.zeros((int(pad_s * rate_hz), channels), np.int16)
    np.concatenate([frames, pad]).astype("<i2").tofile(infile)
    pacer = directory / f"{name}_pace.py"
    pacer.write_text(PACER_SCRIPT)
    bytes_per_s = rate_hz * channels * BYTES_PER_SAMPLE
    asoundrc = directory / f"{name}.asoundrc"
    asoundrc.write_text(
        f"pcm.{name} {{\n"
        "    type plug\n"
        "    slave {\n"
        "        pcm {\n"
        "            type file\n"
        '            slave.pcm "null"\n'
        f'            infile "{infile}"\n'
        f'            file "|{sys.executable} {pacer} {bytes_per_s}"\n'
        '            format "raw"\n'
        "        }\n"
        f"        rate {rate_hz}\n"
        f"        channels {channels}\n"
        "        format S16_LE\n"
        "    }\n"
        "}\n"
    )
    config_path = [str(STOCK_ALSA_CONF)] if STOCK_ALSA_CONF.exists() else []
    env = {"ALSA_CONFIG_PATH": ":".join([*config_path, str(asoundrc)])}
    return AlsaFileDevice(name, rate_hz, channels, len(frames), frames, asoundrc, infile, env)


def use_in_process(device: AlsaFileDevice) -> None:
    """Make this process's PortAudio see `device`: set the env and rescan (no stream open)."""
    os.environ.update(device.env)
    import sounddevice as sd

    sd._terminate()
    sd._initialize()
