"""Why cuda pads to a shape grid: per-call time of one utterance on wav2vec2-base, one run.

    python bench/shapes.py [--calls 40] [--out bench/out/shapes.json]

Cases, each timed over --calls single-utterance calls after its own warm-up:
  repeat          one length, again and again (every kernel choice cached);
  fresh           a length never seen before on every call (what a live daemon gets);
  fresh-nocudnn   the same with cuDNN off (PyTorch's own conv kernels, nothing to plan), after
                  its first 10 calls (fresh-nocudnn-first);
  fresh-grid      fresh lengths padded to the shape grid the Classifier uses on cuda, after the
                  grid cells were seen once with other lengths; fresh-grid-nocudnn likewise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from fixtures import OUT_DIR, base_checkpoint, utterance_files

from intentd.classify import load_clip
from intentd.model import Classifier


def per_call_ms(clf: Classifier, clips: list[np.ndarray]) -> list[float]:
    """Wall time of classify() for each clip alone."""
    times = []
    for c in clips:
        t0 = time.perf_counter()
        clf.classify([c])
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--out", type=Path, default=OUT_DIR / "shapes.json")
    args = ap.parse_args()
    clf = Classifier(base_checkpoint(), device="cuda", top_k=1, cudnn=True)  # cases switch it
    base = load_clip(str(utterance_files(100)[0]))  # ~2-3 s of speech
    trims = iter(range(1, 100_000, 7))  # every clip a length not used before

    def fresh(n: int) -> list[np.ndarray]:
        return [base[: base.size - next(trims)] for _ in range(n)]

    rows: dict[str, list[float]] = {}
    clf.pads_to_shapes = False
    per_call_ms(clf, [base] * 5)
    rows["repeat"] = per_call_ms(clf, [base] * args.calls)
    rows["fresh"] = per_call_ms(clf, fresh(args.calls))
    clf.cudnn = False
    rows["fresh-nocudnn-first"] = per_call_ms(clf, fresh(10))
    rows["fresh-nocudnn"] = per_call_ms(clf, fresh(args.calls))
    clf.cudnn = True
    clf.pads_to_shapes = True
    per_call_ms(clf, fresh(5))  # the trims stay within one or two 0.25 s cells
    rows["fresh-grid"] = per_call_ms(clf, fresh(args.calls))
    clf.cudnn = False
    per_call_ms(clf, fresh(5))
    rows["fresh-grid-nocudnn"] = per_call_ms(clf, fresh(args.calls))
    report = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "clip_s": round(base.size / 16000, 2),
        "calls": args.calls,
        "ms_per_call": {
            k: {"p50": round(statistics.median(v), 2), "max": round(max(v), 2)} for k, v in rows.items()
        },
    }
    print(json.dumps(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
