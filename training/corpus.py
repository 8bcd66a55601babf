"""`intentd corpus`: a synthetic MInDS-14-style spoken-intent corpus by espeak-ng, flite, Pico and Piper.

Output is a Hugging Face `audiofolder`: `OUT/<label>/<file>.wav` (8 kHz mono PCM_16, like
MInDS-14's telephone audio) plus `OUT/metadata.csv`. With a metadata file, `datasets` (5.x)
takes columns from it and does *not* infer labels from folder names, so a plain
`load_dataset("audiofolder", data_dir=OUT)` gives `label` as a string column;
`load_corpus(OUT)` gives it as a `ClassLabel` over `INTENTS` (same order as sorted folder names).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import logging
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from intentd.errors import ConfigError
from intentd.resample import resample
from intentd.speak import (
    ESPEAK,
    FLITE,
    FLITE_PREFIX,
    FLITE_VOICES,
    NATURAL_PITCH,
    PICO_PREFIX,
    PICO_VOICES,
    PIPER_PREFIX,
    PIPER_VOICES,
    speak,
)
from intentd_train.wording import INTENTS, CorpusError, load_phrasings, render

if TYPE_CHECKING:
    from datasets import DatasetDict

log = logging.getLogger(__name__)

CORPUS_RATE_HZ = 8000  # MInDS-14 is 8 kHz telephone audio
PCM_SUBTYPE = "PCM_16"
PEAK_LEVEL = 10 ** (-3 / 20)  # -3 dBFS: each clip's peak after normalisation
METADATA_NAME = "metadata.csv"
METADATA_COLUMNS = ("file_name", "label", "text", "phrasing_id", "voice", "rate_wpm", "pitch")

DEFAULT_PER_INTENT = 700  # 14 x 700 = 9,800 clips, 6-7 renderings of each of 108 phrasings
DEFAULT_JOBS = 2
MIN_RATE_WPM, MAX_RATE_WPM = 125, 195
MIN_PITCH, MAX_PITCH = 20, 80  # espeak-ng's 0-99 scale; 50 is the voice's own
# Shares of clips spoken by flite, Pico and Piper instead of espeak-ng: more synthesizers, so
# that the model learns words rather than one synthesizer's sound.
FLITE_SHARE = 0.25
PICO_SHARE = 0.2
PIPER_SHARE = 0.15
# Pico's two voices are female; pitch factors 0.56-1.24 put their F0 at about 90-220 Hz,
# men's and women's voices alike.
PICO_MIN_PITCH, PICO_MAX_PITCH = 28, 62

# English espeak-ng voices shipped with the base data (no MBROLA voices are installed).
BASE_VOICES: tuple[str, ...] = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-gb-x-rp",
    "en-029",
    "en-us-nyc",
)
# Human-sounding variants (`-v voice+variant`); "" is the voice's default. Robotic, whispered
# and novelty variants are left out: evaluation audio is real callers.
VARIANTS: tuple[str, ...] = (
    "",
    "m1", "m2", "m3", "m4", "m5", "m6", "m7",
    "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4",
    "Andy", "Annie", "aunty", "belinda", "david", "edward", "grandma", "grandpa",
    "john", "linda", "max", "michel", "paul", "quincy", "rob", "steph", "travis", "zac",
)  # fmt: skip


@dataclass(frozen=True)
class Clip:
    """One planned clip: what to say, in which voice (espeak-ng, flite:, pico: or piper:), and where."""

    file_name: str  # relative to the corpus folder
    label: str
    text: str
    phrasing_id: str
    voice: str
    rate_wpm: int
    pitch: int


@dataclass(frozen=True)
class CorpusConfig:
    """What to build: validated once at the edge, then passed down."""

    seed: int = 0
    per_intent: int = DEFAULT_PER_INTENT
    intents: tuple[str, ...] = INTENTS
    jobs: int = DEFAULT_JOBS
    force: bool = False

    def __post_init__(self) -> None:
        if self.per_intent < 1:
            raise ConfigError(f"--per-intent must be at least 1, got {self.per_intent}")
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {self.jobs}")
        unknown = [name for name in self.intents if name not in INTENTS]
        if unknown or not self.intents:
            raise ConfigError(
                f"unknown intents {unknown or '(none given)'}; choose from {', '.join(INTENTS)}"
            )


@dataclass(frozen=True)
class CorpusSummary:
    """What `build_corpus` wrote."""

    out_dir: Path
    clips: int
    clips_per_label: dict[str, int]
    phrasings: int
    voices: tuple[str, ...]
    audio_s: float
    elapsed_s: float
    metadata_path: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata_path", self.out_dir / METADATA_NAME)


def plan_corpus(config: CorpusConfig) -> list[Clip]:
    """Every clip to synthesise: phrasings round-robin, voice/rate/pitch/slots drawn from seed."""
    phrasings = load_phrasings(config.intents)
    clips: list[Clip] = []
    for label in config.intents:
        # One generator per (seed, intent) so building a subset of intents gives the same
        # clips for those intents as the full build.
        rng = np.random.default_rng([config.seed, INTENTS.index(label)])
        order = rng.permutation(len(phrasings[label]))
        for k in range(config.per_intent):
            phrasing = phrasings[label][order[k % len(order)]]
            variant = str(rng.choice(VARIANTS))
            base = str(rng.choice(BASE_VOICES))
            voice = f"{base}+{variant}" if variant else base
            pitch = int(rng.integers(MIN_PITCH, MAX_PITCH + 1))
            synthesizer = rng.random()
            if synthesizer < FLITE_SHARE:
                voice, pitch = FLITE_PREFIX + str(rng.choice(FLITE_VOICES)), NATURAL_PITCH
            elif synthesizer < FLITE_SHARE + PICO_SHARE:
                voice = PICO_PREFIX + str(rng.choice(PICO_VOICES))
                pitch = int(rng.integers(PICO_MIN_PITCH, PICO_MAX_PITCH + 1))
            elif synthesizer < FLITE_SHARE + PICO_SHARE + PIPER_SHARE:
                voice, pitch = PIPER_PREFIX + str(rng.choice(PIPER_VOICES)), NATURAL_PITCH
            clips.append(
                Clip(
                    file_name=f"{label}/{phrasing.id}-{k:04d}.wav",
                    label=label,
                    text=render(phrasing.template, rng),
                    phrasing_id=phrasing.id,
                    voice=voice,
                    rate_wpm=int(rng.integers(MIN_RATE_WPM, MAX_RATE_WPM + 1)),
                    pitch=pitch,
                )
            )
    return clips


def synthesize(clip: Clip) -> np.ndarray:
    """Speak `clip.text`; float32 mono at `CORPUS_RATE_HZ`."""
    samples, rate_hz = speak(clip.text, voice=clip.voice, wpm=clip.rate_wpm, pitch=clip.pitch)
    if samples.ndim != 1:
        raise CorpusError(f"{clip.voice} gave {samples.shape} audio for {clip.file_name}, not mono")
    out = resample(samples, rate_hz, CORPUS_RATE_HZ)
    # Some variants reach full scale and the resampler's overshoot would then clip, so every
    # clip is peak-normalised; level is the trainer's augmentation to vary, not the voice's.
    peak = float(np.abs(out).max()) if out.size else 0.0
    if peak == 0.0:
        raise CorpusError(f"{clip.voice} gave silence for {clip.file_name}")
    return (out * (PEAK_LEVEL / peak)).astype(np.float32)


def _write_clip(out_dir: Path, clip: Clip) -> int:
    """Synthesise and save one clip; returns its length in samples."""
    samples = synthesize(clip)
    sf.write(out_dir / clip.file_name, samples, CORPUS_RATE_HZ, subtype=PCM_SUBTYPE)
    return len(samples)


def _prepare_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse a non-empty folder unless `force`; then clear what an earlier build wrote."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CorpusError(f"{out_dir} is a file, not a folder; choose another OUT")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise CorpusError(f"{out_dir} is not empty; choose another OUT or pass --force")
        log.info("--force: replacing the corpus in %s", out_dir)
        (out_dir / METADATA_NAME).unlink(missing_ok=True)
        for label in INTENTS:
            shutil.rmtree(out_dir / label, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_metadata(out_dir: Path, clips: Sequence[Clip]) -> None:
    """Write `metadata.csv` in plan order, with `\\n` line ends so it is byte-stable."""
    with open(out_dir / METADATA_NAME, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(METADATA_COLUMNS)
        for c in clips:
            writer.writerow([getattr(c, name) for name in METADATA_COLUMNS])


def build_corpus(
    out_dir: Path,
    seed: int = 0,
    per_intent: int = DEFAULT_PER_INTENT,
    intents: Sequence[str] = INTENTS,
    jobs: int = DEFAULT_JOBS,
    force: bool = False,
    progress: bool = True,
) -> CorpusSummary:
    """Synthesise the corpus into `out_dir`; the same arguments give byte-identical files."""
    config = CorpusConfig(seed, per_intent, tuple(intents), jobs, force)
    for program in (ESPEAK, FLITE):
        if shutil.which(program) is None:
            raise CorpusError(f"{program} not found on PATH; install it (apt-get install {program})")
    if importlib.util.find_spec("py_nanotts") is None:
        raise CorpusError("py-nanotts (Pico voices) is not installed; pip install 'intentd[train]'")
    started = time.monotonic()
    out_dir = Path(out_dir)
    clips = plan_corpus(config)
    _prepare_out_dir(out_dir, config.force)
    for label in config.intents:
        (out_dir / label).mkdir()
    log.info("synthesising %d clips into %s with %d jobs", len(clips), out_dir, config.jobs)

    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=config.jobs) as pool:
        lengths = list(
            tqdm(
                pool.map(lambda c: _write_clip(out_dir, c), clips),
                total=len(clips),
                desc="corpus",
                unit="clip",
                disable=not progress,
            )
        )
    _write_metadata(out_dir, clips)
    summary = CorpusSummary(
        out_dir=out_dir,
        clips=len(clips),
        clips_per_label=dict(Counter(c.label for c in clips)),
        phrasings=len({c.phrasing_id for c in clips}),
        voices=tuple(sorted({c.voice for c in clips})),
        audio_s=sum(lengths) / CORPUS_RATE_HZ,
        elapsed_s=time.monotonic() - started,
    )
    log.info("wrote %d clips (%.0f s of audio) in %.1f s", summary.clips, summary.audio_s,
             summary.elapsed_s)  # fmt: skip
    return summary


def load_corpus(out_dir: Path, cache_dir: Path | None = None) -> DatasetDict:
    """Load a built corpus with `label` as a `ClassLabel` over all of `INTENTS`."""
    from datasets import Audio, ClassLabel, Features, Value, load_dataset

    features = Features(
        {
            "audio": Audio(sampling_rate=CORPUS_RATE_HZ),
            "label": ClassLabel(names=list(INTENTS)),
            "text": Value("string"),
            "phrasing_id": Value("string"),
            "voice": Value("string"),
            "rate_wpm": Value("int64"),
            "pitch": Value("int64"),
        }
    )
    return load_dataset(
        "audiofolder",
        data_dir=str(out_dir),
        features=features,
        cache_dir=str(cache_dir) if cache_dir else None,
    )


def _intent_list(value: str) -> tuple[str, ...]:
    """Split `--intents a,b,c`; CorpusConfig checks the names."""
    return tuple(name.strip() for name in value.split(",") if name.strip())


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `intentd corpus OUT [--seed N] [--per-intent N] [--intents ...] [--jobs N]`."""
    p = subparsers.add_parser(
        "corpus",
        help="synthesise a MInDS-14-style spoken-intent corpus with espeak-ng, flite, Pico and Piper",
        description="Write OUT/<label>/*.wav (8 kHz mono PCM_16) and OUT/metadata.csv "
        "(an audiofolder dataset). Same --seed and sizes give byte-identical files.",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="output folder (must be empty)")
    p.add_argument("--seed", type=int, default=0, help="voice/rate/pitch/slot draws (default 0)")
    p.add_argument(
        "--per-intent",
        type=int,
        default=DEFAULT_PER_INTENT,
        metavar="N",
        help=f"clips per intent, cycling through its phrasings (default {DEFAULT_PER_INTENT})",
    )
    p.add_argument(
        "--intents",
        type=_intent_list,
        default=INTENTS,
        metavar="A,B,...",
        help="comma-separated subset of the 14 intents (default all)",
    )
    p.add_argument(
        "--jobs", type=int, default=DEFAULT_JOBS, help=f"synthesizer processes (default {DEFAULT_JOBS})"
    )
    p.add_argument("--force", action="store_true", help="replace a corpus already in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The `corpus` subcommand: build, then print a one-line summary."""
    summary = build_corpus(
        args.out,
        seed=args.seed,
        per_intent=args.per_intent,
        intents=args.intents,
        jobs=args.jobs,
        force=args.force,
        progress=not args.quiet,
    )
    print(
        f"wrote {summary.clips} clips ({summary.audio_s / 60:.1f} min of audio, "
        f"{summary.phrasings} phrasings, {len(summary.voices)} voices) to {summary.out_dir} "
        f"in {summary.elapsed_s:.0f} s"
    )
    return 0
