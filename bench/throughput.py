"""Throughput: `intentd classify`'s code path vs transformers' audio-classification pipeline, one run.

    .venv/bin/python bench/throughput.py [--clips 100] [--block 10] [--variants fp32 int8 fp32-eager ...]
    python bench/throughput.py --device cuda --repeat 20 --block 256 --variants fp16-b1 fp16-b64 ...

Both run the same wav2vec2-base checkpoint (random init, 14 labels; bench/fixtures.py) on the same
generated 1-5 s utterances, read through the daemon's front end (`load_clip`). Variants run
interleaved, block by block, so a neighbour's load hits all of them alike; the reported numbers are
ratios against the pipeline measured in this run. int8 agreement is also measured on a trained
checkpoint (models/demo if present, else --trained DIR); on cuda, fp16 there against fp32 on the CPU.
A variant is a precision (`pipeline`, `fp32`, `int8`, or `fp16`: what fp32 runs as on cuda) and
optional parts: `1thread`, `eager` (attention), `b<N>` (max batch, default 8), `equal` (batch only
clips of equal length, as before per-clip norms let wav2vec2-base mix lengths), `nocudnn`, `fp32enc`
(int8 with the conv layers, feature encoder and positional conv, left in fp32, as before they ran in bf16),
`compile` (`torch.compile` with inductor freezing and dynamic shapes, compiled and warmed on
1-2 silent clips of 3 lengths before timing; the time that takes is printed as `compile_s`),
`onnx` (`model.runtime = "onnx"`: exported once into the cache, then ONNX Runtime on the CPU; on a
CPU with AMX, `int8-onnx` runs the conv encoder as bf16 matmuls in torch and `int8-onnx-fp32enc`
the whole model in ONNX Runtime).
Writes bench/out/throughput.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from fixtures import OUT_DIR, base_checkpoint, machine_load, utterance_files

from intentd.classify import classify_clips, load_clip
from intentd.config import DEMO_MODEL_DIR
from intentd.model import Classifier
from intentd.resample import MODEL_RATE_HZ

DEFAULT_VARIANTS = ["fp32", "int8", "fp32-eager", "pipeline-1thread", "fp32-1thread", "int8-1thread"]
CUDA_VARIANTS = ["fp16-b1", "fp16-b64-equal", "fp16-b64", "fp16-b256"]
MAX_BATCH = 8  # intentd's default model.max_batch
COMPILE_WARMUP_S = (0.9, 2.7, 4.5)  # below and across the timed set's 1-5 s: shorter clips recompile
TRAINED_FALLBACK = OUT_DIR / "models" / "trained-tiny"
Runner = Callable[[list[np.ndarray]], list[str]]


def pipeline_runner(model: Path, device: str = "cpu") -> Runner:
    """The seed's inference path: one pipeline call per clip, as its docs show."""
    from transformers import pipeline

    pipe = pipeline("audio-classification", model=str(model), device=device)

    def run(clips: list[np.ndarray]) -> list[str]:
        return [pipe({"raw": c, "sampling_rate": MODEL_RATE_HZ}, top_k=1)[0]["label"] for c in clips]

    return run


def classify_runner(
    model: Path,
    precision: str = "fp32",
    attn: str | None = None,
    device: str = "cpu",
    max_batch: int = MAX_BATCH,
    equal_lengths: bool = False,
    cudnn: bool = True,
    bf16_encoder: bool = True,
    compiled: bool = False,
    runtime: str = "torch",
) -> Runner:
    """`intentd classify`'s path: Classifier + classify_clips (sorted by length, batches of max_batch)."""
    clf = Classifier(
        model, device=device, top_k=1, precision=precision, bf16_encoder=bf16_encoder, runtime=runtime
    )
    if attn is not None:
        clf.model.set_attn_implementation(attn)
    if compiled:
        compile_model(clf)
    if equal_lengths:  # the path before mixed lengths: no per-clip norm, no shape grid
        clf.mixes_lengths = clf.pads_batches = clf.pads_to_shapes = False
        clf.clip_norm = None
    clf.cudnn = cudnn
    return lambda clips: [p.intent for p in classify_clips(clf, clips, max_batch)]


def compile_model(clf: Classifier) -> None:
    """`torch.compile` the classifier's model and compile every graph the timed clips will need."""
    import torch._inductor.config as inductor

    # Freezing folds the weights into the graph as constants, so inductor can prepack them for
    # oneDNN; without it the compiled model calls the same matmuls as eager.
    inductor.freezing = True
    clf.model = torch.compile(clf.model, dynamic=True)
    t0 = time.perf_counter()
    # Batch 1 and 2 (equal lengths share a pass) at three lengths: dynamic shapes still
    # specialise on sizes 0 and 1, and the first call per kind of shape compiles.
    for n in (1, 2):
        for seconds in COMPILE_WARMUP_S:
            clf.classify([np.zeros(int(seconds * MODEL_RATE_HZ), np.float32)] * n)
    print(json.dumps({"compile_s": round(time.perf_counter() - t0, 1), "precision": clf.precision}))


def with_threads(n: int, run: Runner) -> Runner:
    """Run with torch's intra-op pool at `n` threads, restoring it afterwards."""

    def wrapped(clips: list[np.ndarray]) -> list[str]:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return run(clips)
        finally:
            torch.set_num_threads(before)

    return wrapped


def variant_runner(model: Path, variant: str, device: str) -> Runner:
    """A runner for a variant name such as `int8-1thread` or `fp16-b64-equal` (see the module doc)."""
    head, *parts = variant.split("-")
    if head not in ("pipeline", "fp32", "int8", "fp16") or (head == "fp16") != (device == "cuda"):
        raise SystemExit(f"unknown variant {variant!r} on {device}")
    batch = [int(p[1:]) for p in parts if p[:1] == "b" and p[1:].isdigit()]
    known = {"1thread", "eager", "equal", "nocudnn", "fp32enc", "compile", "onnx"}
    if set(parts) - known - {f"b{n}" for n in batch}:
        raise SystemExit(f"unknown variant {variant!r}")
    if head == "pipeline":
        run = pipeline_runner(model, device)
    else:
        run = classify_runner(
            model,
            "int8" if head == "int8" else "fp32",
            attn="eager" if "eager" in parts else None,
            device=device,
            max_batch=batch[0] if batch else MAX_BATCH,
            equal_lengths="equal" in parts,
            cudnn="nocudnn" not in parts,
            bf16_encoder="fp32enc" not in parts,
            compiled="compile" in parts,
            runtime="onnx" if "onnx" in parts else "torch",
        )
    return with_threads(1, run) if "1thread" in parts else run


def build_runners(model: Path, variants: list[str], device: str = "cpu") -> dict[str, Runner]:
    """The pipeline baseline plus the requested intentd variants."""
    runners: dict[str, Runner] = {"pipeline": pipeline_runner(model, device)}
    for v in variants:
        runners[v] = variant_runner(model, v, device)
    return runners


def timed(
    runners: dict[str, Runner], clips: list[np.ndarray], block: int, warmup: int = 1
) -> dict[str, dict[str, object]]:
    """Seconds and labels per runner, running the runners in turn on each block of clips."""
    secs = dict.fromkeys(runners, 0.0)
    labels: dict[str, list[str]] = {k: [] for k in runners}
    for run in runners.values():  # warm-up: lazy init, allocator, thread pool (and cuda kernels)
        run([c[: c.size - 997] for c in clips[:warmup]])  # lengths no timed clip has
    for start in range(0, len(clips), block):
        part = clips[start : start + block]
        for name, run in runners.items():
            t0 = time.perf_counter()
            labels[name] += run(part)
            secs[name] += time.perf_counter() - t0
    return {k: {"seconds": secs[k], "labels": labels[k]} for k in runners}


def agreement(a: list[str], b: list[str]) -> float:
    """Fraction of equal top-1 labels."""
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def trained_agreement(
    model: Path, clips: list[np.ndarray], device: str = "cpu", runtime: str = "torch"
) -> dict[str, object]:
    """fp32 on the CPU vs int8 there (or fp16 on cuda) on a trained checkpoint: top-1 agreement,
    largest probability change, time ratio. int8 runs in `runtime`, fp32 always in torch."""
    fp32 = Classifier(model, device="cpu", top_k=1000)
    precision = "int8" if device == "cpu" else "fp32"
    int8 = Classifier(model, device=device, top_k=1000, precision=precision, runtime=runtime)
    t0 = time.perf_counter()
    a = classify_clips(fp32, clips, MAX_BATCH)
    t1 = time.perf_counter()
    b = classify_clips(int8, clips, MAX_BATCH)
    t2 = time.perf_counter()
    diffs = [max(abs(s - dict(y.top_k)[label]) for label, s in x.top_k) for x, y in zip(a, b, strict=True)]
    return {
        "model": model.name,  # a folder name: results are committed
        "labels_predicted_fp32": len({x.intent for x in a}),
        "compared": f"int8 ({runtime}) vs fp32 on cpu" if device == "cpu" else "fp16 on cuda vs fp32 on cpu",
        "int8_vs_fp32_top1": agreement([x.intent for x in a], [y.intent for y in b]),
        "max_abs_prob_change": round(max(diffs), 4),
        "mean_max_abs_prob_change": round(float(np.mean(diffs)), 4),
        "int8_speedup": round((t1 - t0) / (t2 - t1), 3),
    }


def plot(report: dict[str, object], path: Path) -> None:
    """Bar chart of real-time factor per variant, with the ratio to the pipeline on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    assert isinstance(rows, dict)
    names = list(rows)
    rtf = [rows[n]["rtf"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar(names, rtf, color=["grey" if n.startswith("pipeline") else "tab:blue" for n in names])
    ax.tick_params(axis="x", labelrotation=25, labelsize=8)
    for bar, n in zip(bars, names, strict=True):
        top = (bar.get_x() + bar.get_width() / 2, bar.get_height())
        ax.annotate(f"{rows[n]['speedup_vs_pipeline']:.2f}x", top, ha="center", va="bottom")
    load = report["machine"]
    ax.set_ylabel("real-time factor (lower is faster)")
    where = report.get("gpu") or f"CPU x{load['cpus']}"  # type: ignore[index]
    ax.set_title(f"wav2vec2-base, {report['clips']} clips, {where}, load {load['loadavg_1m']}")  # type: ignore[index]
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=100)
    ap.add_argument("--block", type=int, default=10, help="clips per interleaved block")
    ap.add_argument("--variants", nargs="+", default=None, help="default: a CPU or a cuda set")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument(
        "--repeat", type=int, default=1, help="run the clip set this many times (a GPU needs more)"
    )
    ap.add_argument("--warmup", type=int, default=1, help="clips each variant runs untimed first")
    ap.add_argument("--trained", type=Path, default=None, help="trained checkpoint for int8 agreement")
    ap.add_argument("--out", type=Path, default=OUT_DIR / "throughput.json")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the whole run (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = base_checkpoint()
    once = [load_clip(str(p)) for p in utterance_files(args.clips)]
    # Each repeat a sample shorter, so no two clips share a length (as in a live daemon).
    clips = [c[: c.size - r] for r in range(args.repeat) for c in once]
    audio_s = sum(len(c) for c in clips) / MODEL_RATE_HZ
    load_before = machine_load()
    variants = args.variants or (CUDA_VARIANTS if args.device == "cuda" else DEFAULT_VARIANTS)
    res = timed(build_runners(model, variants, args.device), clips, args.block, args.warmup)
    base_s = res["pipeline"]["seconds"]
    ref_labels = res["pipeline"]["labels"]
    results = {}
    for name, r in res.items():
        s = r["seconds"]
        results[name] = {
            "seconds": round(s, 3),  # type: ignore[arg-type]
            "utterances_per_s": round(len(clips) / s, 3),  # type: ignore[operator]
            "rtf": round(s / audio_s, 5),  # type: ignore[operator]
            "x_real_time": round(audio_s / s, 1),  # type: ignore[operator]
            "speedup_vs_pipeline": round(base_s / s, 3),  # type: ignore[operator]
            "top1_agreement_vs_pipeline": agreement(r["labels"], ref_labels),  # type: ignore[arg-type]
            # Same precision, batched vs one clip per pass: padding must not change answers.
            f"top1_agreement_vs_{variants[0]}": agreement(r["labels"], res[variants[0]]["labels"]),  # type: ignore[arg-type]
        }
        print(json.dumps({"variant": name, **results[name]}))
    trained = args.trained or (DEMO_MODEL_DIR if DEMO_MODEL_DIR.is_dir() else TRAINED_FALLBACK)
    report: dict[str, object] = {
        "model": "wav2vec2-base (Wav2Vec2Config() defaults, random init, 14 labels, no attention mask)",
        "clips": len(clips),
        "audio_s": round(audio_s, 2),
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": {"before": load_before, **machine_load()},
        "results": results,
        "labels_predicted_by_pipeline": len(set(ref_labels)),  # type: ignore[arg-type]
    }
    if (trained / "model.safetensors").is_file():
        report["trained_int8"] = trained_agreement(trained, once, args.device)
        print(json.dumps(report["trained_int8"]))
        if any("onnx" in v.split("-") for v in variants):
            report["trained_int8_onnx"] = trained_agreement(trained, once, args.device, "onnx")
            print(json.dumps(report["trained_int8_onnx"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    plot(report, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
