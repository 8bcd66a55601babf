"""Speech synthesis with espeak-ng or flite, for the demo, the training corpus and the benches.

A voice is an espeak-ng voice name (`en-us`, `en-gb+f3`) or `flite:<voice>` (`flite:slt`):
two synthesizers of different kinds (formant and concatenative), so a model trained on both
has not learnt one synthesizer's sound.
"""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import soundfile as sf

from intentd.errors import IntentdError

ESPEAK = "espeak-ng"
FLITE = "flite"
FLITE_PREFIX = "flite:"
FLITE_VOICES = ("kal16", "awb", "rms", "slt")  # flite's English voices, kal (8 kHz) aside
FLITE_NATURAL_WPM = 170  # flite's speaking rate at duration_stretch 1


def speak(text: str, voice: str = "en-us", wpm: int = 160, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Speak `text`; returns float32 mono samples and the synthesizer's sample rate.

    flite voices keep their own pitch: flite sets an absolute mean F0, which would turn
    male voices female; `pitch` applies to espeak-ng only.
    """
    if voice.startswith(FLITE_PREFIX):
        name = voice[len(FLITE_PREFIX) :]
        if name not in FLITE_VOICES:
            # flite falls back to its default voice on an unknown name, silently.
            raise IntentdError(f"unknown flite voice {name!r}; choose from {', '.join(FLITE_VOICES)}")
        stretch = f"duration_stretch={FLITE_NATURAL_WPM / wpm:.3f}"
        command = [FLITE, "-voice", name, "--setf", stretch, "-t", text, "-o", "/dev/stdout"]
        return _run(FLITE, command, voice)
    command = [ESPEAK, "-v", voice, "-s", str(wpm), "-p", str(pitch), "--stdout", text]
    return _run(ESPEAK, command, voice)


def _run(program: str, command: list[str], voice: str) -> tuple[np.ndarray, int]:
    if shutil.which(program) is None:
        raise IntentdError(f"{program} not found; install it (apt-get install {program}) or run `make setup`")
    proc = subprocess.run(command, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise IntentdError(f"{program} failed for voice {voice!r}: {err[0] if err else 'no output'}")
    samples, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return samples, rate
