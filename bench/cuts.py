"""Test-time speeds on four cuts of the same speech, from a `bench/heldout.py` run's output.

For each utterance of OUT/heldout.json: its 8 kHz clip, the stream event's segment (the event that
overlaps its true span most), the true span of the stream, and that span with `PAD_S` either side.
Each cut goes through the daemon's front end (`to_model_rate`) and `Classifier`, at speed 1 alone
and at the checkpoint's test-time speeds, so the two paths of heldout.py can be told apart:

    .venv/bin/python bench/heldout.py --eval-phrasings --model DIR --out bench/out/eval-x
    .venv/bin/python bench/cuts.py bench/out/eval-x --model DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from heldout import file_stem

from intentd.classify import classify_clips, load_clip
from intentd.model import Classifier
from intentd.resample import to_model_rate

log = logging.getLogger(__name__)

PAD_S = 0.3  # about the segmenter's pre-roll
BATCH = 16
CUTS = ("clip", "event", "span", "span+pad")


def cuts(out: Path, trained_rate_hz: int | None) -> tuple[dict[str, list[np.ndarray]], list[str]]:
    """Each utterance's four cuts (16 kHz float32) and its intent, voice by voice."""
    report = json.loads((out / "heldout.json").read_text())
    audio: dict[str, list[np.ndarray]] = {c: [] for c in CUTS}
    want: list[str] = []
    for voice in sorted({item["voice"] for item in report["items"]}):
        stem = out / "streams" / file_stem(voice)
        stream, rate_hz = sf.read(f"{stem}.wav", dtype="float32")
        lines = Path(f"{stem}.events.jsonl").read_text().splitlines()
        events = [json.loads(line) for line in lines]
        for item in (i for i in report["items"] if i["voice"] == voice):
            s0, s1 = item["stream"]["start_s"], item["stream"]["end_s"]
            overlaps = [(min(s1, e["end_s"]) - max(s0, e["start_s"]), e) for e in events]
            overlap, event = max(overlaps, key=lambda t: t[0])
            if overlap <= 0:
                continue  # missed by the segmenter: no event to cut
            audio["clip"].append(load_clip(item["clip"]["path"], trained_rate_hz))
            for name, (start_s, end_s) in (
                ("event", (event["start_s"], event["end_s"])),
                ("span", (s0, s1)),
                ("span+pad", (s0 - PAD_S, s1 + PAD_S)),
            ):
                piece = stream[int(max(0.0, start_s) * rate_hz) : int(end_s * rate_hz)]
                audio[name].append(to_model_rate(piece, rate_hz, trained_rate_hz))
            want.append(item["intent"])
    return audio, want


def right(clf: Classifier, clips: list[np.ndarray], want: list[str]) -> list[bool]:
    """Whether each clip's top-1 is its intent, through `intentd classify`'s batching."""
    return [p.intent == w for p, w in zip(classify_clips(clf, clips, BATCH), want, strict=True)]


def main() -> int:
    """Print right counts per cut at speed 1 and at the test-time speeds; write OUT/cuts.json."""
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="a bench/heldout.py --out folder")
    p.add_argument("--model", default="models/demo", help="the checkpoint heldout.py scored")
    args = p.parse_args()
    clf = Classifier(args.model)
    audio, want = cuts(args.out, clf.trained_rate_hz)
    speeds = clf.tta_speeds
    results: dict[str, dict[str, list[bool]]] = {}
    for name, chosen in (("speed 1", (1.0,)), ("speeds", speeds)):
        clf.tta_speeds = chosen
        results[name] = {c: right(clf, audio[c], want) for c in CUTS}
    print(f"{len(want)} utterances; test-time speeds {speeds}")
    for c in CUTS:
        a, b = results["speed 1"][c], results["speeds"][c]
        gained = sum(y and not x for x, y in zip(a, b, strict=True))
        lost = sum(x and not y for x, y in zip(a, b, strict=True))
        print(f"{c:9s} speed 1 {sum(a):4d}   speeds {sum(b):4d}   (+{gained} / -{lost})")
    (args.out / "cuts.json").write_text(json.dumps({"model": args.model, "speeds": speeds, "right": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
