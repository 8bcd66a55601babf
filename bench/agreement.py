"""Top-1 agreement with torch fp32 on a trained checkpoint: torch int8 and ONNX Runtime fp32 / int8 (split).

    .venv/bin/python bench/agreement.py [--model models/demo] [--every 20] DIR_OR_WAV...

Each WAV (folders are searched recursively; every `--every`-th file of a folder with more than
1,000, such as a corpus) goes through `intentd classify`'s front end and every variant. Writes
bench/out/agreement.json: per variant, the clips whose top-1 matches fp32 and the largest change of
any probability.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixtures import OUT_DIR

from intentd import encoder
from intentd.classify import classify_clips, load_clip
from intentd.config import DEMO_MODEL_DIR
from intentd.model import Classifier
from intentd.rewrites import cpu_has_amx

VARIANTS = {
    "int8": ("int8", "torch"),
    "fp32-onnx": ("fp32", "onnx"),
    "int8-onnx": ("int8", "onnx"),
    # The conv encoder as bf16 matmuls outside the graph, also for a narrow encoder (the demo's),
    # so its numbers can be checked on a trained checkpoint; AMX CPUs only.
    "int8-onnx-split": ("int8", "onnx"),
}
LARGE_FOLDER = 1000
MIN_CHANNELS = encoder.MIN_CHANNELS


def wav_files(paths: list[Path], every: int) -> list[Path]:
    """The WAVs named or found under each folder, thinning large folders to every `every`-th."""
    files: list[Path] = []
    for p in paths:
        found = sorted(p.rglob("*.wav")) if p.is_dir() else [p]
        files += found[::every] if len(found) > LARGE_FOLDER else found
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", type=Path, nargs="+")
    ap.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--out", type=Path, default=OUT_DIR / "agreement.json")
    args = ap.parse_args()
    files = wav_files(args.paths, args.every)
    clips = [load_clip(str(f)) for f in files]
    ref = classify_clips(Classifier(args.model, device="cpu", top_k=1000), clips, 8)
    report: dict[str, object] = {
        "model": args.model.name,  # a folder name: results are committed
        "clips": len(clips),
        "paths": list(map(str, args.paths)),
    }
    for name, (precision, runtime) in VARIANTS.items():
        split = name.endswith("-split")
        if split and not cpu_has_amx():
            continue
        encoder.MIN_CHANNELS = 0 if split else MIN_CHANNELS
        try:
            clf = Classifier(
                args.model, device="cpu", top_k=1000, precision=precision, runtime=runtime, bf16_encoder=split
            )
        finally:
            encoder.MIN_CHANNELS = MIN_CHANNELS
        got = classify_clips(clf, clips, 8)
        same = sum(a.intent == b.intent for a, b in zip(ref, got, strict=True))
        change = max(
            max(abs(s - dict(b.top_k)[k]) for k, s in a.top_k) for a, b in zip(ref, got, strict=True)
        )
        report[name] = {
            "top1_same": same,
            "top1_agreement": round(same / len(clips), 4),
            "max_prob_change": round(change, 4),
        }
        print(json.dumps({"variant": name, **report[name]}), flush=True)  # type: ignore[dict-item]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
