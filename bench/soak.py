"""Soak: hours of real-time replay into a running daemon while subscribers join and leave.

    .venv/bin/python bench/soak.py [--duration-s 3900] [--model DIR]

Starts `intentd run --source none --source net:ipc://…` and feeds it, at real time, synthetic
request streams (bench/streams.py: several voices, 1-2.5 s gaps, pink noise at 20 dB SNR) one file
after another through the `intentd_client.send.Sender` library. Meanwhile subscribers connect, read
for a random while and leave (some never read). Every 30 s it samples the daemon's RSS and open file
descriptors. Reports the RSS slope (MB/hour, least squares over the second half), fd range, event
count vs segments, and p50/p99 of `latency_ms.total`. Writes bench/out/soak.json and soak.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streams import build_stream

from intentd_client.protocol import IntentEvent
from intentd_client.send import Sender
from intentd_client.subscriber import Subscriber

INTENTD = Path(sys.executable).parent / "intentd"
SAMPLE_PERIOD_S = 30.0
STREAM_S = 60.0


def rss_mb(pid: int) -> float:
    """Resident set size of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def churn(endpoint: str, stop: threading.Event, seed: int, counts: dict[str, int]) -> None:
    """A subscriber that comes and goes; one in four connects and never reads."""
    rng = random.Random(seed)
    ctx = zmq.Context.instance()
    while not stop.is_set():
        stay_s = rng.uniform(5, 120)
        if rng.random() < 0.25:
            sock = ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(endpoint)
            stop.wait(stay_s)
            sock.close(linger=0)
            counts["deaf"] += 1
            continue
        with Subscriber(endpoint, timeout_s=1.0, context=ctx) as sub:
            end = time.monotonic() + stay_s
            while time.monotonic() < end and not stop.is_set():
                if sub.recv(0.5) is not None:
                    counts["received"] += 1
        counts["sessions"] += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=3900.0)
    ap.add_argument("--model", help="checkpoint (default: the built-in demo model)")
    ap.add_argument("--subscribers", type=int, default=4)
    args = ap.parse_args()
    out_dir = Path(__file__).resolve().parent / "out"
    out_dir.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="intentd-soak-"))
    net, pub = f"ipc://{tmp}/audio.sock", f"ipc://{tmp}/events.sock"
    wavs = []
    for i in range(4):
        st = build_stream(STREAM_S, 16000, 20.0, seed=100 + i)
        wavs.append(tmp / f"stream{i}.wav")
        sf.write(str(wavs[-1]), st.samples, 16000, subtype="PCM_16")
    cmd = [str(INTENTD), "run", "--source", "none", "--source", f"net:{net}", "--publish", pub]
    proc = subprocess.Popen([*cmd, *(["--model", args.model] if args.model else [])],
                            stderr=open(out_dir / "soak-daemon.log", "w"))  # fmt: skip
    ctx = zmq.Context.instance()
    watcher = Subscriber(pub, timeout_s=1.0, heartbeats=True, context=ctx)
    if not watcher.wait_ready(120):
        proc.kill()
        raise SystemExit("daemon did not come up")
    stop = threading.Event()
    counts = {"sessions": 0, "deaf": 0, "received": 0}
    threads = [
        threading.Thread(target=churn, args=(pub, stop, i, counts), daemon=True)
        for i in range(args.subscribers)
    ]
    for t in threads:
        t.start()
    latencies: list[float] = []
    samples: list[dict[str, float]] = []
    last_stats: dict[str, float] = {}

    def feed() -> None:
        sender = Sender(net, timeout_s=30.0, context=ctx)
        i = 0
        while not stop.is_set():
            sender.send_file(str(wavs[i % len(wavs)]), realtime=True, chunk_ms=100)
            i += 1
        sender.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    started = time.monotonic()
    next_sample = started
    while time.monotonic() - started < args.duration_s:
        item = watcher.recv(0.5)
        if isinstance(item, IntentEvent):
            latencies.append(item.latency_ms.total)
        elif item is not None and hasattr(item, "stats"):
            last_stats = dict(item.stats)
        if time.monotonic() >= next_sample:
            samples.append({
                "t_s": round(time.monotonic() - started, 1),
                "rss_mb": round(rss_mb(proc.pid), 1),
                "fds": len(os.listdir(f"/proc/{proc.pid}/fd")),
                "events": last_stats.get("events", 0),
            })  # fmt: skip
            print(json.dumps(samples[-1]), flush=True)
            next_sample += SAMPLE_PERIOD_S
    stop.set()
    proc.terminate()
    rc = proc.wait(60)
    watcher.close()
    half = [s for s in samples if s["t_s"] >= args.duration_s / 2]
    slope = (
        float(np.polyfit([s["t_s"] / 3600 for s in half], [s["rss_mb"] for s in half], 1)[0])
        if len(half) > 2
        else None
    )
    rss = [s["rss_mb"] for s in samples]
    p50_p99 = [float(np.percentile(latencies, q)) for q in (50, 99)] if latencies else None
    report = {
        "duration_s": args.duration_s,
        "exit_code": rc,
        "rss_mb_first_last_max": [rss[0], rss[-1], max(rss)],
        "rss_slope_mb_per_hour_second_half": slope,
        "fds_min_max": [min(s["fds"] for s in samples), max(s["fds"] for s in samples)],
        "events": len(latencies),
        "segments": last_stats.get("segments"),
        "queue_drops": last_stats.get("queue_drops"),
        "latency_total_ms_p50_p99": p50_p99,
        "subscriber_sessions": counts,
        "samples": samples,
    }  # fmt: skip
    (out_dir / "soak.json").write_text(json.dumps(report, indent=1))
    _plot(samples, out_dir / "soak.png")
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}))
    return 0


def _plot(samples: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    t = [s["t_s"] / 60 for s in samples]
    ax.plot(t, [s["rss_mb"] for s in samples], label="RSS (MB)")
    ax2 = ax.twinx()
    ax2.plot(t, [s["fds"] for s in samples], color="tab:orange", label="open fds")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax2.set_ylabel("open fds")
    fig.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
