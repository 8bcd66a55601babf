"""Speech synthesis with espeak-ng, for the demo and the training corpus."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import soundfile as sf

from intentd.errors import IntentdError

ESPEAK = "espeak-ng"


def speak(text: str, voice: str = "en-us", wpm: int = 160, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Speak `text`; returns float32 mono samples and espeak-ng's sample rate (22.05 kHz)."""
    if shutil.which(ESPEAK) is None:
        raise IntentdError("espeak-ng not found; install it (apt-get install espeak-ng) or run `make setup`")
    proc = subprocess.run(
        [ESPEAK, "-v", voice, "-s", str(wpm), "-p", str(pitch), "--stdout", text],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise IntentdError(f"espeak-ng failed for voice {voice!r}: {err[0] if err else 'no output'}")
    samples, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return samples, rate
