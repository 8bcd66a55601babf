"""The ONNX Runtime path: a checkpoint exported once to ONNX (int8: MatMuls quantised), then run on the CPU.

For int8 the conv feature encoder is exported as MatMuls too (`intentd.encoder.GraphEncoder`),
so the quantiser covers it.

On the 2-core bench machine ONNX Runtime ran wav2vec2-base several times faster than eager
PyTorch at the same precision (bench/RESULTS.md). Exporting takes seconds to tens of seconds, so
the file is cached, keyed by the checkpoint's bytes, the precision and the library versions; a
later start loads it without loading the PyTorch weights at all.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from intentd.encoder import WAVEFORM_WEIGHT, GraphEncoder
from intentd.encoder import graph_supports as graph_encoder_supports
from intentd.errors import ModelError

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx")
# Bump when the export changes, so cached files from an older export are not reused.
EXPORT_VERSION = 2  # 2: int8 exports the conv encoder as MatMuls
OPSET = 17
CACHE_SUBDIR = Path("intentd") / "onnx"
# Exports kept in the cache; beyond this the least recently used are deleted. Each new checkpoint
# (a retrained model reloaded with SIGHUP, another precision) adds one, 95-360 MB for wav2vec2-base.
MAX_CACHED_EXPORTS = 4
_HASH_CHUNK = 1 << 20


def cache_root() -> Path:
    """Where exported models live: `$XDG_CACHE_HOME/intentd/onnx` (the unit sets it to /var/cache/intentd)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / CACHE_SUBDIR


def cache_key(path: Path, precision: str, features_in: bool = False) -> str:
    """What the exported file depends on: weights, config, precision, input, export and library versions."""
    import onnxruntime

    h = hashlib.sha256()
    h.update(f"{EXPORT_VERSION}|{precision}|{torch.__version__}|{onnxruntime.__version__}".encode())
    if features_in:
        h.update(b"|features")
    for f in sorted([*path.glob("*.safetensors"), path / "config.json"]):
        h.update(f.name.encode())
        with f.open("rb") as fh:
            while block := fh.read(_HASH_CHUNK):
                h.update(block)
    return h.hexdigest()[:20]


def cached_file(path: Path, precision: str, features_in: bool = False) -> Path:
    """The cache path of this checkpoint's export (it may not exist yet).

    `features_in`: the graph starts after the conv feature encoder (intentd.encoder runs that).
    """
    name = "model.int8.onnx" if precision == "int8" else "model.onnx"
    if features_in:
        name = name.replace(".onnx", ".features.onnx")
    return cache_root() / cache_key(path, precision, features_in) / name


def mark_used(file: Path, max_exports: int = MAX_CACHED_EXPORTS) -> None:
    """Record that `file`'s export was just used, and delete the least recently used exports
    beyond `max_exports`.

    An export's folder carries its last use as its mtime. A failure to delete is logged: a full
    cache must not stop the daemon from starting.
    """
    try:
        os.utime(file.parent)
        exports = [d for d in cache_root().iterdir() if d.is_dir() and not d.name.startswith(".")]
        exports.sort(key=lambda d: d.stat().st_mtime_ns, reverse=True)
        for old in exports[max_exports:]:
            if old != file.parent:
                shutil.rmtree(old)
                log.info("removed the least recently used ONNX export %s", old)
    except OSError as e:
        log.warning("cannot tidy the ONNX cache %s: %s", cache_root(), e)


class _FramesFirst(torch.nn.Module):
    """Stands in for the conv feature encoder: takes its output as `[batch, frames, channels]`."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The encoder's `[batch, channels, frames]`, which the model transposes straight back."""
        return features.transpose(1, 2)


class _Logits(torch.nn.Module):
    """The classifier with one input and one output, as the export takes it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        """(batch, samples) normalised audio -> (batch, labels) logits."""
        return self.model(input_values=input_values).logits


def export(model: torch.nn.Module, out: Path, precision: str, features_in: bool = False) -> Path:
    """Write `model` (fp32, eval) to `out` as ONNX, int8 with its MatMuls quantised; atomic.

    `features_in`: the graph's input is the conv encoder's output, `features` (`[batch, frames,
    channels]`), and the encoder is left out. Else for int8 a wav2vec2 conv encoder is exported
    as MatMuls (`GraphEncoder`). Either way `model` is changed in place.
    """
    out.parent.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    name, axis = "input_values", "samples"
    example = torch.zeros(1, 16_000)
    if features_in:
        model.base_model.feature_extractor = _FramesFirst()
        name, axis = "features", "frames"
        example = torch.zeros(1, 50, model.config.conv_dim[-1])
    elif precision == "int8" and graph_encoder_supports(model.config):
        conv = model.base_model.feature_extractor
        model.base_model.feature_extractor = GraphEncoder(model.config, conv.conv_layers)
    with tempfile.TemporaryDirectory(dir=out.parent.parent, prefix=".export-") as tmp:
        fp32 = Path(tmp) / "model.onnx"
        with warnings.catch_warnings(), torch.inference_mode():
            # Tracing warns about every Python branch on a shape; none of them depends on the
            # length, which stays dynamic, and the test compares the scores at several lengths.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Logits(model),
                (example,),
                str(fp32),
                input_names=[name],
                output_names=["logits"],
                dynamic_axes={name: {0: "batch", 1: axis}, "logits": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        result = fp32
        if precision == "int8":
            result = Path(tmp) / out.name
            _quantize(fp32, result)
        staged = Path(tmp) / "final"
        staged.mkdir()
        shutil.move(result, staged / out.name)
        try:
            staged.rename(out.parent)
        except OSError:
            if not out.exists():  # not a concurrent export of the same key
                raise
    log.info("exported %s in %.1f s", out, time.perf_counter() - t0)
    return out


class _DropPreprocessHint(logging.Filter):
    """Drops the quantiser's root-logger hint to run its pre-processing pass first.

    The session optimises the graph itself when it loads (its own fusions made ONNX Runtime's
    transformer optimiser gain nothing, bench/RESULTS.md); the hint would land in the daemon's
    log on every export.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")


def _quantize(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    hint = _DropPreprocessHint()
    logging.getLogger().addFilter(hint)
    try:
        # MatMuls only: ONNX Runtime's ConvInteger was slower than the fp32 convolutions.
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         nodes_to_exclude=_waveform_matmuls(onnx.load(str(src))))  # fmt: skip
    finally:
        logging.getLogger().removeFilter(hint)


def _waveform_matmuls(model: onnx.ModelProto) -> list[str]:
    """The MatMuls by `GraphEncoder`'s waveform layer kernels, which int8 leaves in fp32.

    Their input is the audio itself, quantised to 8 bits per tensor: on the trained demo model
    that flipped 3.0 % of the answers against fp32, 0.7 % with this layer in fp32
    (bench/RESULTS.md). It is under 1 % of the encoder's arithmetic.
    """
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1].endswith(f"feature_extractor.{WAVEFORM_WEIGHT}")
    ]


class OrtModel:
    """An exported classifier in an ONNX Runtime CPU session: normalised audio in, logits out."""

    def __init__(self, file: Path, threads: int = 0, spin: bool = True) -> None:
        """`threads`: ONNX Runtime's intra-op pool; 0 takes torch's, which `model.threads` sets.

        `spin=False` when torch runs between passes (the split encoder): ONNX Runtime's threads
        spinning for work took the cores from torch's (85 -> 71 ms a 3 s clip without them).
        """
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = onnxruntime.InferenceSession(
                str(file), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own untyped errors for a bad file
            raise ModelError(f"ONNX model {file} cannot be loaded: {str(e).splitlines()[0]}; "
                             "delete it to export again") from e  # fmt: skip
        self.file = file
        self.input_name = self.session.get_inputs()[0].name  # input_values, or features

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """(batch, samples) audio or (batch, frames, channels) features -> (batch, labels) logits."""
        values = inputs.astype(np.float32, copy=False)  # the extractor's output already is
        return self.session.run(["logits"], {self.input_name: values})[0]
