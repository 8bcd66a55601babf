"""What a shorter VAD hangover costs in segmentation: utterances split, merged or missed, per hangover.

    .venv/bin/python bench/hangover.py [--hangover-ms 480 360 240 160] [--snr-db 20 10] [--duration-s 120]

The hangover is the floor of end-of-speech latency (bench/live.py latency). This runs the daemon's
own segmenter with only `hangover_ms` changed, scored as bench/segmentation.py scores it. It also
lists the pauses inside utterances that each hangover bridged (`bridged_pauses_ms`: a speculation
withdrawn because speech resumed), i.e. how close the hangover came to splitting one.
Writes bench/out/hangover.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixtures import OUT_DIR
from segmentation import score
from streams import build_stream

from intentd.resample import MODEL_RATE_HZ
from intentd.segment import Withdrawn, final_segments
from intentd.vad import Segmenter, VadConfig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hangover-ms", type=int, nargs="+", default=[480, 360, 240, 160])
    ap.add_argument("--snr-db", type=float, nargs="+", default=[20.0, 10.0])
    ap.add_argument("--duration-s", type=float, default=120.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    results = []
    for snr in args.snr_db:
        streams = [build_stream(args.duration_s, MODEL_RATE_HZ, snr, seed=s) for s in args.seeds]
        for h in args.hangover_ms:
            cfg = dataclasses.replace(VadConfig(), hangover_ms=h, tail_ms=min(VadConfig().tail_ms, h))
            total: dict[str, float] = {}
            pauses_ms: list[float] = []
            for st in streams:
                seg = Segmenter(cfg, st.rate_hz, source="bench")
                # One VAD frame per chunk (segments do not depend on chunking): an output then
                # comes out exactly at the end of the frame that caused it.
                step = st.rate_hz * cfg.frame_ms // 1000
                out = []
                for i in range(0, st.samples.size, step):
                    for o in seg.process(st.samples[i : i + step]):
                        if isinstance(o, Withdrawn):  # this frame was voiced again
                            resumed_s = i / st.rate_hz
                            pauses_ms.append(round((resumed_s - o.segment.end_of_speech_s) * 1000))
                        out.append(o)
                out += seg.flush()
                for k, v in score(st.spans_s, [(s.start_s, s.end_s) for s in final_segments(out)]).items():
                    total[k] = total.get(k, 0) + v
            r = {"snr_db": snr, "hangover_ms": h, **total, "bridged_pauses_ms": sorted(pauses_ms)}
            results.append(r)
            print(json.dumps(r), flush=True)
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "hangover.json").write_text(json.dumps({"results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
