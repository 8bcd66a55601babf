"""The daemon's configuration: frozen nested dataclasses built once from TOML and flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from intentd.errors import ConfigError
from intentd.vad import VadConfig

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
# The built-in demo model ships in the repo next to the package folders.
REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL_DIR = REPO_ROOT / "models" / "demo"
MODEL_ENV = "INTENTD_MODEL"


def default_model_path() -> str:
    """The model used when none is configured: $INTENTD_MODEL, else the built-in demo model."""
    return os.environ.get(MODEL_ENV) or str(DEMO_MODEL_DIR)


@dataclass(frozen=True)
class ModelConfig:
    """Which checkpoint runs where, and how its worker batches."""

    path: str = ""  # empty: the built-in demo model
    device: str = "auto"
    max_batch: int = 8
    max_wait_ms: float = 10.0
    min_score: float = 0.0
    top_k: int = 3
    threads: int = 0  # 0: torch's default
    precision: str = "fp32"  # fp32, or int8: Linear layers quantised, conv layers in bf16 (CPU only)
    # cuda only: cuDNN's convolutions (true) or PyTorch's own (false). On an H200, own kernels ran a
    # single utterance of wav2vec2-base 2.3x faster and cuDNN a batch of 64 1.7x faster
    # (bench/RESULTS.md section 7); the daemon mostly runs batches of 1-2.
    cudnn: bool = False
    # torch, or onnx: the checkpoint exported once to ONNX ($XDG_CACHE_HOME/intentd/onnx) and run
    # in ONNX Runtime on the CPU (several times faster than eager torch on the bench machine).
    runtime: str = "torch"

    def __post_init__(self) -> None:
        _check(self.device in ("auto", "cpu", "cuda"), "model.device must be auto, cpu or cuda")
        _check(1 <= self.max_batch <= 1024, "model.max_batch must be 1..1024")
        _check(0 <= self.max_wait_ms <= 10_000, "model.max_wait_ms must be 0..10000")
        _check(0.0 <= self.min_score <= 1.0, "model.min_score must be 0..1")
        _check(1 <= self.top_k <= 100, "model.top_k must be 1..100")
        _check(0 <= self.threads <= 256, "model.threads must be 0..256")
        _check(self.precision in ("fp32", "int8"), "model.precision must be fp32 or int8")
        _check(self.runtime in ("torch", "onnx"), "model.runtime must be torch or onnx")
        _check(
            not (self.runtime == "onnx" and self.device == "cuda"),
            "model.runtime onnx runs on the CPU: set model.device to cpu or auto",
        )

    @property
    def resolved_path(self) -> str:
        """The folder to load."""
        return self.path or default_model_path()


@dataclass(frozen=True)
class SourceConfig:
    """Where audio comes from: `mic`, `mic:NAME_OR_INDEX`, `wav:PATH` or `none`, plus the network."""

    spec: str = "mic"
    net: str = ""  # ZeroMQ endpoint to bind for replays streamed in by `intentd send`; empty: off
    realtime: bool = False  # pace wav: sources at real time
    rate_hz: int = 0  # 0: the device's default rate
    channels: int = 0  # 0: the device's maximum input channels
    recover_s: float = 30.0  # a lost capture device is reopened with backoff for this long, then exit 1
    net_max_streams: int = 8  # network streams open at once; more are refused (too_many_streams)

    def __post_init__(self) -> None:
        kind = self.spec.split(":", 1)[0]
        _check(
            kind in ("mic", "wav", "none"),
            f"source.spec {self.spec!r} must be mic, mic:DEVICE, wav:PATH or none",
        )
        _check(kind != "none" or bool(self.net), "source.spec none needs source.net")
        _check(
            not self.net or self.net.startswith(("tcp://", "ipc://", "inproc://")),
            f"source.net {self.net!r} must start with tcp://, ipc:// or inproc://",
        )
        _check(kind != "wav" or len(self.spec) > 4, "source.spec wav: needs a path")
        _check(
            self.rate_hz == 0 or 1000 <= self.rate_hz <= 384_000, "source.rate_hz must be 0 or 1000..384000"
        )
        _check(0 <= self.channels <= 64, "source.channels must be 0..64")
        _check(0 <= self.recover_s <= 86_400, "source.recover_s must be 0..86400")
        _check(1 <= self.net_max_streams <= 1024, "source.net_max_streams must be 1..1024")


@dataclass(frozen=True)
class PublishConfig:
    """The ZeroMQ PUB endpoint and heartbeat period."""

    endpoint: str = DEFAULT_ENDPOINT
    heartbeat_s: float = 1.0

    def __post_init__(self) -> None:
        _check(
            self.endpoint.startswith(("tcp://", "ipc://", "inproc://")),
            f"publish.endpoint {self.endpoint!r} must start with tcp://, ipc:// or inproc://",
        )
        _check(0.05 <= self.heartbeat_s <= 3600, "publish.heartbeat_s must be 0.05..3600")


@dataclass(frozen=True)
class QueueConfig:
    """Bounds of the pipeline's queues (see runner.py for what happens when they fill)."""

    audio_max_chunks: int = 512
    segment_max: int = 64

    def __post_init__(self) -> None:
        _check(1 <= self.audio_max_chunks <= 1_000_000, "queues.audio_max_chunks must be 1..1000000")
        _check(1 <= self.segment_max <= 100_000, "queues.segment_max must be 1..100000")


@dataclass(frozen=True)
class MetricsConfig:
    """The opt-in Prometheus endpoint (see metrics.py); loopback only unless `address` says otherwise."""

    port: int = 0  # 0: no metrics endpoint
    address: str = "127.0.0.1"

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65_535, "metrics.port must be 0..65535 (0: off)")
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise ConfigError(f"metrics.address {self.address!r} must be an IP address") from None


@dataclass(frozen=True)
class SecurityConfig:
    """Who may connect to tcp endpoints: CURVE keys (see intentd.security for the rules)."""

    server_secret_key: str = ""  # the daemon's NAME.key_secret from `intentd keys`
    allowed_clients_dir: str = ""  # the NAME.key files of the clients admitted
    require_curve: bool = False  # CURVE on loopback tcp endpoints too, not only on exposed ones


@dataclass(frozen=True)
class Config:
    """Everything the daemon needs, validated."""

    model: ModelConfig = field(default_factory=ModelConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    queues: QueueConfig = field(default_factory=QueueConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def to_toml(self) -> str:
        """The effective config as TOML text (for --print-config)."""
        lines: list[str] = []
        for f in fields(self):
            lines.append(f"[{f.name}]")
            for k, v in dataclasses.asdict(getattr(self, f.name)).items():
                lines.append(f"{k} = {_toml_value(v)}")
            lines.append("")
        return "\n".join(lines)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def _section(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    for key, v in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")
        default = getattr(cls(), key)
        if isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if type(v) is not type(default):
            raise ConfigError(f"{where}: {key} must be {type(default).__name__}, got {v!r}")
    return cls(**values)


def apply(base: Config, overrides: dict[str, dict[str, Any]], where: str) -> Config:
    """A copy of `base` with `{section: {key: value}}` overrides, each validated."""
    sections = {f.name: f for f in fields(Config)}
    changed: dict[str, Any] = {}
    for name, values in overrides.items():
        if name not in sections:
            raise ConfigError(f"{where}: unknown section [{name}] (known: {', '.join(sections)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{name}] must be a table")
        current = dataclasses.asdict(getattr(base, name))
        current.update(values)
        changed[name] = _section(type(getattr(base, name)), current, f"{where} [{name}]")
    return replace(base, **changed)


def load(path: str | Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Defaults, then the TOML file (if any), then flag overrides; the one place config is built."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {p} cannot be read: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
        cfg = apply(cfg, data, str(p))
    if overrides:
        cfg = apply(cfg, overrides, "command line")
    return cfg
