"""Segmentation accuracy: does every utterance of a noisy multi-voice stream give exactly one event?

    .venv/bin/python bench/segmentation.py [--duration-s 120] [--snr-db 30 20 10] [--rates 48000 8000]

Runs the daemon's own segmenter (the stage `intentd replay` uses) over synthetic streams with pink
noise and counts, per true utterance, the segments that overlap it. Writes bench/out/segmentation.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streams import build_stream

from intentd.vad import Segmenter, VadConfig

CHUNK_MS = 20


def score(spans: list[tuple[float, float]], segs: list[tuple[float, float]]) -> dict[str, float]:
    """Per-utterance overlap counts: exactly-one, missed, split; and segments matching no utterance."""
    hits = [sum(1 for s, e in segs if s < end and e > start) for start, end in spans]
    spurious = sum(1 for s, e in segs if not any(s < end and e > start for start, end in spans))
    return {
        "utterances": len(spans),
        "segments": len(segs),
        "exactly_one": sum(h == 1 for h in hits),
        "missed": sum(h == 0 for h in hits),
        "split": sum(h > 1 for h in hits),
        "spurious": spurious,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=120.0)
    ap.add_argument("--snr-db", type=float, nargs="+", default=[30.0, 20.0, 10.0])
    ap.add_argument("--rates", type=int, nargs="+", default=[48000, 8000])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = VadConfig()
    results = []
    for snr in args.snr_db:
        for rate in args.rates:
            st = build_stream(args.duration_s, rate, snr, seed=args.seed)
            seg = Segmenter(cfg, rate, source="bench")
            step = rate * CHUNK_MS // 1000
            out = []
            for i in range(0, st.samples.size, step):
                out += seg.process(st.samples[i : i + step])
            out += seg.flush()
            r = {"snr_db": snr, "rate_hz": rate, **score(st.spans_s, [(s.start_s, s.end_s) for s in out])}
            results.append(r)
            print(json.dumps(r))
    out_dir = Path(__file__).resolve().parent / "out"
    out_dir.mkdir(exist_ok=True)
    report = {"vad": cfg.__dict__, "results": results}
    (out_dir / "segmentation.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
