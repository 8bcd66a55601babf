#!/usr/bin/env bash
# Issue #6's GPU benchmarks in one run, on cuda: per-call cost by input shape, batched
# throughput, then capacity.
#
#   bench/gpu.sh [OUT_DIR]          (default bench/out/gpu)
#   bench/gpu.sh --prepare          makes the inputs in bench/out (needs espeak-ng)
#
# Environment: PARTS (default "shapes throughput capacity"), STREAMS, CHUNK_MS (each sender's
# message size for capacity, default 20), CUDNN, REPEAT, VARIANTS (throughput), TAG (appended to
# the capacity file name, so runs of several code versions sit side by side).
#
# The run needs a python (PYTHON, default python3) with torch on cuda, transformers, and intentd
# importable. Its inputs (clips and streams) are made beforehand by --prepare on any machine with
# espeak-ng, since a GPU box may have none, and travel in bench/out. Capacity runs without
# speculation, so its p99 (cut -> event) holds the whole queue + inference + publish time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STREAM_S=30
STREAMS=${STREAMS:-"64 128 256 384"}
CUDNN=${CUDNN:-on}  # model.cudnn for the capacity run
REPEAT=${REPEAT:-10}
PARTS=${PARTS:-"shapes throughput capacity"}
CHUNK_MS=${CHUNK_MS:-20}
if [ "${1:-}" = "--prepare" ]; then
    exec "$PY" -c "
import sys; sys.path.insert(0, 'bench')
from fixtures import cached_stream, utterance_files
from live import DISTINCT_STREAMS, SPEECH_GAPS_S
utterance_files(100)
for seed in range(DISTINCT_STREAMS):
    cached_stream($STREAM_S, 16000, SPEECH_GAPS_S['capacity'], seed)
"
fi
out=${1:-bench/out/gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$out/gpu.txt"
case " $PARTS " in *" shapes "*) "$PY" bench/shapes.py --out "$out/shapes-cuda.json" ;; esac
case " $PARTS " in *" throughput "*)
    # shellcheck disable=SC2086
    "$PY" bench/throughput.py --device cuda --repeat "$REPEAT" --block 256 --warmup 256 \
        ${VARIANTS:+--variants $VARIANTS} --out "$out/throughput-cuda.json" ;;
esac
case " $PARTS " in *" capacity "*)
    # shellcheck disable=SC2086
    "$PY" bench/live.py capacity --device cuda --precision fp32 --max-batch 64 --cudnn "$CUDNN" --streams $STREAMS \
        --duration-s "$STREAM_S" --chunk-ms "$CHUNK_MS" --speculative off --p99-of daemon --p99-target-ms 150 \
        --out "$out/capacity-cuda${TAG:+-$TAG}.json" ;;
esac
