"""Segmentation accuracy: does every utterance of a noisy multi-voice stream give exactly one event?

    .venv/bin/python bench/segmentation.py [--duration-s 120] [--snr-db 30 20 10] [--rates 48000 8000]
    .venv/bin/python bench/segmentation.py --replay [--model DIR]   # through `intentd replay`, end to end
    .venv/bin/python bench/segmentation.py --hangover-ms 360 [--replay]   # another vad.hangover_ms

Builds two-minute streams (several espeak-ng voices, gaps of 1-2.5 s, pink noise at each SNR) and
counts, per true utterance, the segments (or, with --replay, the published events) that overlap
it. With --replay it also scores the intents. Writes bench/out/segmentation[-replay][-hMS][-seedN].json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streams import Stream, build_stream

from intentd.segment import final_segments
from intentd.vad import Segmenter, VadConfig

CHUNK_MS = 20
INTENTD = Path(sys.executable).parent / "intentd"


def score(spans: list[tuple[float, float]], segs: list[tuple[float, float]]) -> dict[str, float]:
    """Per-utterance overlap counts (exactly one, missed, split) and per-segment ones (merged, spurious).

    An utterance is right only when exactly one segment overlaps it and that segment overlaps no other.
    """
    hits = [sum(1 for s, e in segs if s < end and e > start) for start, end in spans]
    covers = [sum(1 for start, end in spans if s < end and e > start) for s, e in segs]
    merged = [(s, e) for (s, e), c in zip(segs, covers, strict=True) if c > 1]
    spurious = sum(c == 0 for c in covers)
    return {
        "utterances": len(spans),
        "segments": len(segs),
        "exactly_one": sum(
            h == 1 and not any(s < end and e > start for s, e in merged)
            for h, (start, end) in zip(hits, spans, strict=True)
        ),
        "merged_segments": len(merged),
        "missed": sum(h == 0 for h in hits),
        "split": sum(h > 1 for h in hits),
        "spurious": spurious,
    }


def segment_in_process(st: Stream, vad: VadConfig) -> list[dict[str, float]]:
    """The daemon's segmenter over the stream in 20 ms chunks."""
    seg = Segmenter(vad, st.rate_hz, source="bench")
    step = st.rate_hz * CHUNK_MS // 1000
    out = []
    for i in range(0, st.samples.size, step):
        out += seg.process(st.samples[i : i + step])
    out += seg.flush()
    return [{"start_s": s.start_s, "end_s": s.end_s} for s in final_segments(out)]


def replay(st: Stream, model: str | None, hangover_ms: int, **vad: float) -> list[dict[str, float]]:
    """`intentd replay` over the stream written as a 16-bit WAV; its JSON events.

    `vad` sets more keys of the [vad] section (e.g. confident_hangover_ms=240).
    """
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "stream.wav"
        sf.write(str(wav), st.samples, st.rate_hz, subtype="PCM_16")
        config = Path(tmp) / "intentd.toml"
        config.write_text(
            "[vad]\n" + "".join(f"{k} = {v}\n" for k, v in {"hangover_ms": hangover_ms, **vad}.items())
        )
        cmd = [
            str(INTENTD),
            "replay",
            str(wav),
            "--config",
            str(config),
            *(["--model", model] if model else []),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def intent_accuracy(st: Stream, events: list[dict[str, float]]) -> float:
    """Share of utterances whose single overlapping event names the right intent."""
    right = 0
    for (start, end), want in zip(st.spans_s, st.intents, strict=True):
        hits = [e for e in events if e["start_s"] < end and e["end_s"] > start]
        right += len(hits) == 1 and hits[0]["intent"] == want
    return right / max(1, len(st.spans_s))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=120.0)
    ap.add_argument("--snr-db", type=float, nargs="+", default=[30.0, 20.0, 10.0])
    ap.add_argument("--rates", type=int, nargs="+", default=[48000, 8000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replay", action="store_true", help="run `intentd replay` end to end")
    ap.add_argument("--model", help="checkpoint for --replay (default: the built-in demo model)")
    ap.add_argument("--hangover-ms", type=int, default=VadConfig().hangover_ms, help="vad.hangover_ms")
    args = ap.parse_args()
    vad = dataclasses.replace(VadConfig(), hangover_ms=args.hangover_ms)
    results = []
    for snr in args.snr_db:
        for rate in args.rates:
            st = build_stream(args.duration_s, rate, snr, seed=args.seed)
            events = replay(st, args.model, vad.hangover_ms) if args.replay else segment_in_process(st, vad)
            r = {
                "snr_db": snr,
                "rate_hz": rate,
                **score(st.spans_s, [(e["start_s"], e["end_s"]) for e in events]),
            }
            if args.replay:
                r["intent_accuracy"] = round(intent_accuracy(st, events), 4)
            results.append(r)
            print(json.dumps(r), flush=True)
    out_dir = Path(__file__).resolve().parent / "out"
    out_dir.mkdir(exist_ok=True)
    report = {
        "vad": dataclasses.asdict(vad),
        "mode": "replay" if args.replay else "segmenter",
        "results": results,
    }
    suffix = ("-replay" if args.replay else "") + (f"-h{vad.hangover_ms}" if vad != VadConfig() else "")
    suffix += f"-seed{args.seed}" if args.seed else ""
    (out_dir / f"segmentation{suffix}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
