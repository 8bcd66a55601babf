"""A running daemon under real-time network streams: latency, capacity and footprint.

    .venv/bin/python bench/live.py latency   [--precision fp32 int8] [--hangover-ms 480 240]
                                             [--speculative on off] [--confident-hangover-ms 0 240]
                                             [--confident-score 0.9] [--model models/demo]
    .venv/bin/python bench/live.py capacity  [--precision int8] [--streams 4 8 12 16] [--duration-s 60]
                                 [--device cuda] [--max-batch 64] [--p99-of daemon] [--p99-target-ms 150]
    .venv/bin/python bench/live.py footprint [--precision fp32 int8]

Each case starts `intentd run --source none --source net:ipc://...` on the wav2vec2-base checkpoint
(bench/fixtures.py) with a notify socket (start to READY=1, RSS from /proc), streams synthetic
pink-noise speech (bench/streams.py, known spans) in 20 ms chunks paced at real time, and
timestamps every event on arrival. Latency is end of speech (the true span end) to event received,
split into the end-of-speech wait (VAD hangover, chunking, transport) and the daemon's own
queue/inference/publish times from the event. With speculation on (`vad.speculative`), queue and
inference partly overlap the hangover and `daemon_ms` is what is left after the cut. Every case
list (--speculative on off off on, ...) runs in the order given, so one run can interleave A/B
cases against load drift. Streams are cached in bench/out/streams (bench/fixtures.py); beyond
DISTINCT_STREAMS they repeat, and every sender starts at its own offset within STAGGER_S so repeats
do not speak in unison. A precision may name a runtime: `int8-onnx` is `model.precision = "int8"`,
`model.runtime = "onnx"`. `--confident-hangover-ms` (latency: every value, in order) sets
`vad.confident_hangover_ms`; every case counts the events that came before the full hangover
(`early`) and the utterances whose one event names the intent spoken (`right`: meaningful only
with a trained `--model`). Capacity's p99 is of end of speech -> event (`total`) or, for a GPU
whose budget is smaller than any VAD hangover, of the daemon's own cut -> event time (`daemon`).
Writes bench/out/<command>.{json,png}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import psutil
import zmq
from fixtures import OUT_DIR, base_checkpoint, cached_stream, machine_load
from streams import Stream

from intentd.resample import MODEL_RATE_HZ
from intentd_client.audio_protocol import AudioChunk, StreamEnd, StreamStart, decode_ack
from intentd_client.protocol import Heartbeat, IntentEvent, parse_message

INTENTD = [sys.executable, "-m", "intentd"]  # also where the console script is not beside python
CHUNK_MS = 20  # a microphone-like block: audio leaves the sender once it has been spoken
READY_TIMEOUT_S = 120.0
DRAIN_S = 5.0  # after the last chunk, wait this long for the last events
SPEECH_GAPS_S = {"latency": (1.5, 3.0), "capacity": (7.0, 13.0)}  # capacity: ~20 % speech
P99_TARGET_MS = 1500.0
DISTINCT_STREAMS = 16
STAGGER_S = 5.0
MAX_SENDER_LAG_S = 0.5  # a sender this far behind its real-time schedule is being back-pressured


class NotifyListener:
    """The systemd end of sd_notify: an AF_UNIX datagram socket, READY=1 timestamped."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
        """Block until READY=1; its monotonic time. Raises if the daemon exits or times out."""
        end = time.monotonic() + timeout_s
        self.sock.settimeout(0.1)
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                if b"READY=1" in self.sock.recv(4096):
                    return time.monotonic()
            except TimeoutError:
                continue
        raise RuntimeError("daemon not ready in time")


@dataclass
class Collected:
    """Events and heartbeats with their arrival times."""

    events: list[tuple[float, IntentEvent]] = field(default_factory=list)
    beats: list[Heartbeat] = field(default_factory=list)


class Daemon:
    """`intentd run` on the network source, a subscriber thread, and its footprint."""

    def __init__(
        self,
        model: Path,
        precision: str,
        hangover_ms: int,
        speculative: bool,
        max_streams: int,
        threads: int,
        tmp: Path,
        device: str = "cpu",
        max_batch: int = 8,
        cudnn: bool = True,
        confident: tuple[int, float] = (0, 0.9),
    ) -> None:
        self.audio_ep = f"ipc://{tmp}/audio.sock"
        events_ep = f"ipc://{tmp}/events.sock"
        cfg = tmp / "intentd.toml"
        precision, _, runtime = precision.partition("-")  # "int8-onnx": int8 in ONNX Runtime
        cfg.write_text(
            f'[model]\nprecision = "{precision}"\nruntime = "{runtime or "torch"}"\n'
            f"threads = {threads}\nmax_batch = {max_batch}\n"
            f"cudnn = {str(cudnn).lower()}\n"
            f"[source]\nnet_max_streams = {max_streams}\n"
            f"[vad]\nhangover_ms = {hangover_ms}\nspeculative = {str(speculative).lower()}\n"
            f"confident_hangover_ms = {confident[0]}\nconfident_score = {confident[1]}\n"
        )
        self.notify = NotifyListener(tmp / "notify.sock")
        self.collected = Collected()
        self._stop = threading.Event()
        self._sub = zmq.Context.instance().socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(events_ep)
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path)}
        argv = [
            *INTENTD,
            "run",
            "--device",
            device,
            "--model",
            str(model),
            "--config",
            str(cfg),
            "--source",
            "none",
            "--source",
            f"net:{self.audio_ep}",
            "--publish",
            events_ep,
        ]
        t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.ready_s = self.notify.wait_ready(self.proc, READY_TIMEOUT_S) - t0
        self.ps = psutil.Process(self.proc.pid)
        self.rss_ready_mb = self.ps.memory_info().rss / 2**20
        self.rss_peak_mb = self.rss_ready_mb
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            if self._sub.poll(100):
                m = parse_message(*self._sub.recv_multipart())
                if isinstance(m, IntentEvent):
                    self.collected.events.append((time.monotonic(), m))
                elif isinstance(m, Heartbeat):
                    self.collected.beats.append(m)
                    self.rss_peak_mb = max(self.rss_peak_mb, self.ps.memory_info().rss / 2**20)

    def stop(self) -> None:
        """SIGTERM, wait, close."""
        self._stop.set()
        self._thread.join(timeout=2)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._sub.close(linger=0)
        self.notify.sock.close()


def send_realtime(
    endpoint: str,
    stream_id: str,
    samples: np.ndarray,
    out: dict[str, float],
    delay_s: float = 0.0,
    chunk_ms: int = CHUNK_MS,
) -> None:
    """Stream float32 16 kHz audio in `chunk_ms` chunks at real time, after `delay_s`; records start
    time and worst lag."""
    time.sleep(delay_s)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(StreamStart(stream_id, MODEL_RATE_HZ, 1, "f32le").to_frames())
        if not sock.poll(30_000) or decode_ack(sock.recv_multipart()).status != "started":
            raise RuntimeError(f"stream {stream_id} not started")
        step = MODEL_RATE_HZ * chunk_ms // 1000
        began = out["began"] = time.monotonic()
        lag = 0.0
        seq = 0
        for i in range(0, samples.size, step):
            due = began + min(i + step, samples.size) / MODEL_RATE_HZ
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            lag = max(lag, time.monotonic() - due)
            sock.send_multipart(
                AudioChunk(stream_id, seq, samples[i : i + step].astype("<f4").tobytes()).to_frames()
            )
            seq += 1
            while sock.poll(0):
                sock.recv_multipart()
        sock.send_multipart(StreamEnd(stream_id, seq).to_frames())
        out["lag_s"] = lag
    finally:
        sock.close(linger=0)


def run_streams(daemon: Daemon, streams: list[Stream], chunk_ms: int = CHUNK_MS) -> list[dict[str, object]]:
    """Send every stream concurrently at real time; one row per true utterance."""
    ids = [f"bench-{i}" for i in range(len(streams))]
    info: list[dict[str, float]] = [{} for _ in streams]
    threads = [
        threading.Thread(
            target=send_realtime,
            args=(daemon.audio_ep, sid, s.samples, o, (i * 0.618034) % 1 * STAGGER_S, chunk_ms),
        )
        for i, (sid, s, o) in enumerate(zip(ids, streams, info, strict=True))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(DRAIN_S)
    rows: list[dict[str, object]] = []
    for sid, s, o in zip(ids, streams, info, strict=True):
        evs = [(t, e) for t, e in daemon.collected.events if e.source == f"net:{sid}"]
        for k, (start, end) in enumerate(s.spans_s):
            hits = [(t, e) for t, e in evs if e.start_s < end and e.end_s > start]
            row: dict[str, object] = {
                "stream": sid,
                "utterance": k,
                "intent": s.intents[k],
                "speech_s": end - start,
                "events": len(hits),
                "sender_lag_s": o.get("lag_s", float("nan")),
            }
            if hits:
                t, e = max(hits, key=lambda h: min(h[1].end_s, end) - max(h[1].start_s, start))
                total_ms = (t - (o["began"] + end)) * 1000.0
                row.update(
                    predicted=e.intent,
                    total_ms=total_ms,
                    queue_ms=e.latency_ms.queue,
                    inference_ms=e.latency_ms.inference,
                    daemon_ms=e.latency_ms.total,
                    eos_wait_ms=total_ms - e.latency_ms.total,
                )
            rows.append(row)
    return rows


def percentiles(rows: list[dict[str, object]], key: str) -> dict[str, float]:
    """p50/p95/p99/max of one latency component over the utterances that got an event."""
    v = np.array([r[key] for r in rows if key in r], dtype=float)
    if not v.size:
        return {}
    return {f"p{q}": round(float(np.percentile(v, q)), 1) for q in (50, 95, 99)} | {
        "max": round(float(v.max()), 1)
    }


def summary(rows: list[dict[str, object]], daemon: Daemon, hangover_ms: int) -> dict[str, object]:
    """Latency percentiles per component, misses, and the daemon's failure/rejection counters."""
    last = daemon.collected.beats[-1].stats if daemon.collected.beats else {}
    return {
        "utterances": len(rows),
        "missed": sum(r["events"] == 0 for r in rows),
        "split": sum(int(r["events"]) > 1 for r in rows),  # type: ignore[call-overload]
        "right": sum(r["events"] == 1 and r.get("predicted") == r["intent"] for r in rows),
        "early": sum(float(r.get("eos_wait_ms", hangover_ms)) < hangover_ms for r in rows),  # type: ignore[arg-type]
        "latency_ms": {
            k: percentiles(rows, k)
            for k in ("total_ms", "eos_wait_ms", "queue_ms", "inference_ms", "daemon_ms")
        },
        "sender_lag_max_s": round(max(float(r["sender_lag_s"]) for r in rows), 3),  # type: ignore[arg-type]
        "daemon_stats": {
            k: last.get(k, 0.0)
            for k in (
                "segments",
                "events",
                "segments_failed",
                "worker_errors",
                "net_frames_rejected",
                "segment_queue_full_waits",
                "batch_size_max",
                "queue_drops",
                "speculations",
                "speculations_discarded",
                "confident_cuts",
            )
        },
        "ready_s": round(daemon.ready_s, 2),
        "rss_ready_mb": round(daemon.rss_ready_mb, 1),
        "rss_peak_mb": round(daemon.rss_peak_mb, 1),
    }


def one_case(
    model: Path,
    precision: str,
    hangover_ms: int,
    speculative: bool,
    n_streams: int,
    duration_s: float,
    gaps: tuple[float, float],
    threads: int,
    device: str = "cpu",
    max_batch: int = 8,
    cudnn: bool = True,
    confident: tuple[int, float] = (0, 0.9),
    chunk_ms: int = CHUNK_MS,
) -> dict[str, object]:
    """Start a daemon, stream `n_streams` synthetic streams through it, stop it; the summary."""
    streams = [
        cached_stream(duration_s, MODEL_RATE_HZ, gaps, seed=i % DISTINCT_STREAMS) for i in range(n_streams)
    ]
    with tempfile.TemporaryDirectory(prefix="intentd-bench-") as tmp:
        load = machine_load()
        daemon = Daemon(
            model,
            precision,
            hangover_ms,
            speculative,
            max(8, n_streams),
            threads,
            Path(tmp),
            device,
            max_batch,
            cudnn,
            confident,
        )
        try:
            res = summary(run_streams(daemon, streams, chunk_ms), daemon, hangover_ms)
        finally:
            daemon.stop()
    case = {
        "device": device,
        "max_batch": max_batch,
        "cudnn": cudnn,
        "precision": precision,
        "threads": threads,
        "hangover_ms": hangover_ms,
        "speculative": speculative,
        "confident_hangover_ms": confident[0],
        "confident_score": confident[1],
        "model": model.name,
        "streams": n_streams,
        "duration_s": duration_s,
        "chunk_ms": chunk_ms,
        "machine": load,
        **res,
    }
    print(json.dumps({k: v for k, v in case.items() if k != "daemon_stats"}), flush=True)
    return case


def ok_capacity(case: dict[str, object], p99_of: str = "total", target_ms: float = P99_TARGET_MS) -> bool:
    """p99 within target, no utterance missed, nothing failed or refused, senders kept real time."""
    lat = case["latency_ms"][f"{p99_of}_ms"]  # type: ignore[index]
    st = case["daemon_stats"]
    return (
        bool(lat)
        and lat["p99"] <= target_ms
        and case["missed"] == 0
        and st["segments_failed"] == 0  # type: ignore[index]
        and st["net_frames_rejected"] == 0
        and case["sender_lag_max_s"] <= MAX_SENDER_LAG_S
    )  # type: ignore[index,operator]


def plot(
    command: str,
    cases: list[dict[str, object]],
    path: Path,
    p99_of: str = "total",
    target_ms: float = P99_TARGET_MS,
) -> None:
    """Latency p50/p95/p99 per case (latency, capacity) or RSS and ready time (footprint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    if command == "footprint":
        names = [c["precision"] for c in cases]
        ax.bar(names, [c["rss_ready_mb"] for c in cases])  # type: ignore[misc]
        ax.axhline(700, color="red", ls="--", label="target 700 MB")
        ax.set_ylabel("RSS at READY (MB)")
        for i, c in enumerate(cases):
            ax.annotate(f"ready {c['ready_s']} s", (i, c["rss_ready_mb"]), ha="center", va="bottom")  # type: ignore[arg-type]
    else:
        # Numbered: a case list may repeat a configuration (A/B/B/A), each run gets its own point.
        x = [
            f"{i}. {c['precision']} t{c['threads']}\nh{c['hangover_ms']} n{c['streams']}"
            + ("\nspec" if c["speculative"] else "\nno spec")
            + (f" c{c['confident_hangover_ms']}" if c.get("confident_hangover_ms") else "")
            for i, c in enumerate(cases, 1)
        ]
        for q in ("p50", "p95", "p99"):
            ax.plot(x, [c["latency_ms"][f"{p99_of}_ms"].get(q, np.nan) for c in cases], marker="o", label=q)  # type: ignore[index]
        if command == "latency":
            ax.axhline(400, color="green", ls=":", label="p50 target")
            ax.axhline(700, color="red", ls=":", label="p99 target")
        else:
            ax.axhline(target_ms, color="red", ls=":", label="p99 target")
        ax.set_ylabel("cut -> event (ms)" if p99_of == "daemon" else "end of speech -> event (ms)")
    device = cases[0].get("device", "cpu") if cases else "cpu"
    ax.set_title(f"intentd {command}, wav2vec2-base on {device}, load {machine_load()['loadavg_1m']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("latency", "capacity", "footprint"))
    ap.add_argument("--precision", nargs="+", default=None)
    ap.add_argument("--hangover-ms", type=int, nargs="+", default=[480])
    ap.add_argument(
        "--speculative",
        choices=("on", "off"),
        nargs="+",
        default=["on"],
        help="vad.speculative per case (latency: every value, in order; others: the first)",
    )
    ap.add_argument(
        "--confident-hangover-ms",
        type=int,
        nargs="+",
        default=[0],
        help="vad.confident_hangover_ms per case (latency: every value, in order; others: the first)",
    )
    ap.add_argument("--confident-score", type=float, default=0.9, help="vad.confident_score")
    ap.add_argument("--model", type=Path, default=None, help="default: wav2vec2-base, random init")
    ap.add_argument("--streams", type=int, nargs="+", default=[4, 8, 12, 16])
    ap.add_argument("--duration-s", type=float, default=None)
    ap.add_argument("--threads", type=int, nargs="+", default=[0], help="model.threads (0: torch's default)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--max-batch", type=int, default=8, help="model.max_batch")
    ap.add_argument("--cudnn", choices=("on", "off"), default="on", help="model.cudnn (cuda only)")
    ap.add_argument("--p99-of", choices=("total", "daemon"), default="total", help="capacity's latency")
    ap.add_argument("--p99-target-ms", type=float, default=P99_TARGET_MS)
    ap.add_argument("--chunk-ms", type=int, default=CHUNK_MS, help="audio per message from each sender")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    model = args.model or base_checkpoint()
    latency = args.command == "latency"
    cases: list[dict[str, object]] = []
    duration_s = args.duration_s or {"latency": 120.0, "capacity": 60.0, "footprint": 10.0}[args.command]
    gaps = SPEECH_GAPS_S["capacity" if args.command == "capacity" else "latency"]
    for precision in args.precision or (["int8"] if args.command == "capacity" else ["fp32", "int8"]):
        for threads in args.threads:
            vad = (args.hangover_ms, args.speculative, args.confident_hangover_ms)
            for h, spec, ch in itertools.product(*(v if latency else v[:1] for v in vad)):
                for n in sorted(args.streams) if args.command == "capacity" else [1]:
                    case = one_case(
                        model, precision, h, spec == "on", n, duration_s, gaps, threads,
                        args.device, args.max_batch, args.cudnn == "on", (ch, args.confident_score),
                        args.chunk_ms,
                    )  # fmt: skip
                    cases.append(case)
                    if args.command == "capacity":
                        case["ok"] = ok_capacity(case, args.p99_of, args.p99_target_ms)
                        if not case["ok"]:
                            break
    out = args.out or OUT_DIR / f"{args.command}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {"command": args.command, "machine_end": machine_load(), "cases": cases}
    if args.command == "capacity":
        best: dict[str, int] = {}
        for c in cases:
            key = f"{c['precision']}/threads={c['threads']}"
            best[key] = max(best.get(key, 0), int(c["streams"]) if c["ok"] else 0)  # type: ignore[call-overload]
        report["max_streams_ok"] = best
    out.write_text(json.dumps(report, indent=1))
    plot(args.command, cases, out.with_suffix(".png"), args.p99_of, args.p99_target_ms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
