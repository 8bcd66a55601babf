"""The `intentd` command line: builds config at the edge, runs a job, turns expected errors into one line."""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from intentd import __version__
from intentd.errors import IntentdError

log = logging.getLogger(__name__)

EXIT_USAGE = 2
MODEL_LOAD_BUDGET_S = 120.0
GIL_SWITCH_INTERVAL_S = 0.001  # Python's default is 0.005


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint folder (default: the built-in demo model)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the model runs (default auto)")
    p.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        help="fp32 (default) or int8 (CPU: quantised Linear layers, conv layers in bf16)",
    )
    p.add_argument("--int8", action="store_const", const="int8", dest="precision", help="--precision int8")
    p.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        help="torch (default) or onnx: ONNX Runtime on the CPU, the model exported once into the cache",
    )
    p.add_argument("--config", help="TOML config file (same keys as intentd.toml); flags win")
    p.add_argument("--log-level", default=None, help="debug, info, warning (default) or error")


def _add_security_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server-key",
        metavar="FILE",
        help="CURVE secret key (NAME.key_secret from `intentd keys`): needed to bind tcp beyond loopback",
    )
    p.add_argument(
        "--allowed-clients",
        metavar="DIR",
        help="folder of the public keys (NAME.key) of the clients admitted over CURVE",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full CLI."""
    parser = argparse.ArgumentParser(prog="intentd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"intentd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="the long-running daemon: capture, segment, classify, publish")
    _add_model_flags(p)
    p.add_argument(
        "--source",
        action="append",
        help="mic, mic:NAME_OR_INDEX, wav:PATH or none; repeat with net:ENDPOINT to also take "
        "replays streamed in by `intentd send` (default mic)",
    )
    p.add_argument("--publish", help="ZeroMQ endpoint to bind (default tcp://127.0.0.1:5556)")
    _add_security_flags(p)
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics (default 0: off)",
    )
    p.add_argument("--realtime", action="store_true", default=None, help="pace wav: sources at real time")
    p.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    p.add_argument("--check-config", action="store_true", help="validate the config and exit")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("replay", help="run the pipeline over one WAV file, one JSON line per event")
    p.add_argument("wav", help="audio file (any rate, channels, format soundfile reads)")
    _add_model_flags(p)
    p.add_argument("--realtime", action="store_true", default=None, help="pace at real time")
    p.add_argument("--publish", help="also publish events on this ZeroMQ endpoint")
    _add_security_flags(p)
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("classify", help="classify whole files (no VAD), one JSON line per file")
    p.add_argument("wavs", nargs="+", metavar="WAV")
    _add_model_flags(p)
    p.set_defaults(func=_cmd_classify)

    p = sub.add_parser("info", help="version, device and model in use")
    _add_model_flags(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="speak a few requests with espeak-ng and replay them (built-in model)")
    _add_model_flags(p)
    p.set_defaults(func=_cmd_demo)

    _register_optional(sub)
    return parser


def _register_optional(sub: argparse._SubParsersAction) -> None:
    # The client and training commands live with their packages; training needs the `train` extra.
    from intentd_client import keys, listen, send

    keys.add_parser(sub)
    listen.add_parser(sub)
    send.add_parser(sub)
    try:
        from intentd_train import cli as train_cli
    except ImportError as e:  # the daemon-only install has no datasets/evaluate
        log.debug("training commands unavailable: %s", e)
        return
    train_cli.register(sub)


def _config_from_args(args: argparse.Namespace, source: str | None = None) -> Any:
    from intentd import config

    overrides: dict[str, dict[str, Any]] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            overrides.setdefault(section, {})[key] = value

    put("model", "path", getattr(args, "model", None))
    put("model", "device", getattr(args, "device", None))
    put("model", "precision", getattr(args, "precision", None))
    put("model", "runtime", getattr(args, "runtime", None))
    specs = [source] if source else (getattr(args, "source", None) or [])
    for spec in specs:
        if spec.startswith("net:"):
            put("source", "net", spec[4:])
        else:
            put("source", "spec", spec)
    put("source", "realtime", getattr(args, "realtime", None))
    put("publish", "endpoint", getattr(args, "publish", None))
    put("security", "server_secret_key", getattr(args, "server_key", None))
    put("security", "allowed_clients_dir", getattr(args, "allowed_clients", None))
    put("metrics", "port", getattr(args, "metrics_port", None))
    return config.load(getattr(args, "config", None), overrides)


def _setup_logging(args: argparse.Namespace, default: str) -> None:
    from intentd.journal import setup_logging

    setup_logging(args.log_level or default)
    for noisy in ("transformers", "urllib3", "filelock", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _load_classifier(cfg: Any) -> Any:
    import torch

    from intentd.model import Classifier

    if cfg.model.threads:
        torch.set_num_threads(cfg.model.threads)
    clf = Classifier(
        cfg.model.resolved_path,
        device=cfg.model.device,
        top_k=cfg.model.top_k,
        min_score=cfg.model.min_score,
        precision=cfg.model.precision,
        cudnn=cfg.model.cudnn,
        runtime=cfg.model.runtime,
    )
    clf.warmup()
    return clf


def _make_sources(cfg: Any, curve: Any = None) -> list[Any]:
    """The configured sources, not yet open; a missing device or file fails here, before the model loads."""
    from intentd import devices, sources
    from intentd.audio import open_wav

    out: list[Any] = []
    kind, _, rest = cfg.source.spec.partition(":")
    if kind == "wav":
        open_wav(rest).close()
        out.append(sources.WavSource(rest, realtime=cfg.source.realtime))
    elif kind == "mic":
        device: str | int | None = int(rest) if rest.isdigit() else (rest or None)
        devices.find_input_device(device)
        out.append(
            sources.MicSource(
                device,
                rate_hz=cfg.source.rate_hz or None,
                channels=cfg.source.channels or None,
                queue_max_chunks=cfg.queues.audio_max_chunks,
            )
        )
    if cfg.source.net:
        from intentd.netsource import NetSource

        out.append(
            NetSource(
                cfg.source.net,
                queue_max_chunks=cfg.queues.audio_max_chunks,
                max_streams=cfg.source.net_max_streams,
                curve=curve,
            )
        )
    return out


def _run_pipeline(
    cfg: Any, publish: bool, on_intent: Any = None, args: argparse.Namespace | None = None
) -> int:
    from intentd.security import serving

    # The audio thread and the worker share the GIL. At Python's default 5 ms switch interval, a
    # thread back from a wait outside it (a socket poll, a cuda sync, an ONNX Runtime call) can
    # wait that long for a thread running Python; many streams make that the tail of inference.
    # Put back afterwards, like the signal handlers.
    interval_before = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        # The one place the CURVE authenticator thread (if keys are configured) starts and stops:
        # before the first bind, after the last socket closed. Exposed endpoints without keys fail
        # here, before the model loads.
        with serving(cfg, publish) as curve:
            return _run_pipeline_secured(cfg, publish, on_intent, args, curve)
    finally:
        sys.setswitchinterval(interval_before)


def _run_pipeline_secured(
    cfg: Any, publish: bool, on_intent: Any, args: argparse.Namespace | None, curve: Any
) -> int:
    from intentd.notify import Notifier

    notifier = Notifier.from_env()
    # Loading torch and the model can outlast TimeoutStartSec on a slow edge box.
    notifier.extend_timeout(MODEL_LOAD_BUDGET_S)
    srcs = _make_sources(cfg, curve)
    clf = _load_classifier(cfg)
    from intentd.runner import Pipeline

    for src in srcs:
        src.open()
    pipe = Pipeline(cfg, clf, srcs, on_intent=on_intent, publish=publish, curve=curve)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the segment in progress and draining", signum)
        pipe.stop()

    def on_hangup(_signum: int, _frame: Any) -> None:
        log.info("SIGHUP: reloading the model")
        pipe.request_reload()
        if curve is not None:
            curve.reload()

    def load_model() -> Any:
        # The model section is re-read from the config file; flags still win over it.
        fresh = _config_from_args(args) if args is not None else cfg
        return _load_classifier(fresh)

    handlers = {signal.SIGINT: on_signal, signal.SIGTERM: on_signal, signal.SIGHUP: on_hangup}
    # Put back afterwards: a program that runs `main()` in-process keeps its own Ctrl-C.
    before = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        pipe.start()
        pipe.supervise(notifier, load_model)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    notifier.stopping()
    if pipe.error is not None:
        raise pipe.error
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    _setup_logging(args, "info")
    # A watchdog abort (SIGABRT) then leaves every thread's stack in the journal.
    faulthandler.enable()
    cfg = _config_from_args(args)
    if args.print_config:
        print(cfg.to_toml())
        return 0
    if args.check_config:
        from intentd.security import check

        check(cfg)
        print(f"config ok (model {cfg.model.resolved_path}, source {cfg.source.spec})")
        return 0
    return _run_pipeline(cfg, publish=True, args=args)


def _print_event(event: Any) -> None:
    sys.stdout.write(event.to_json() + "\n")
    sys.stdout.flush()


def _cmd_replay(args: argparse.Namespace) -> int:
    _setup_logging(args, "warning")
    cfg = _config_from_args(args, source=f"wav:{args.wav}")
    return _run_pipeline(cfg, publish=args.publish is not None, on_intent=_print_event)


def _cmd_classify(args: argparse.Namespace) -> int:
    _setup_logging(args, "warning")
    from intentd.classify import classify_files

    cfg = _config_from_args(args)
    return classify_files(args.wavs, _load_classifier(cfg), cfg.model.max_batch)


def _cmd_info(args: argparse.Namespace) -> int:
    _setup_logging(args, "warning")
    import torch

    from intentd.model import TRAINED_RATE_KEY, TTA_SPEEDS_KEY, resolve_device, trained_rate_hz, tta_speeds

    cfg = _config_from_args(args)
    model_path = str(Path(cfg.model.resolved_path).resolve())
    labels: list[str] = []
    model_config: dict[str, Any] = {}
    cfg_file = Path(model_path) / "config.json"
    if cfg_file.is_file():
        model_config = json.loads(cfg_file.read_text())
        id2label = model_config.get("id2label", {})
        labels = [id2label[k] for k in sorted(id2label, key=int)]
    info = {
        "version": __version__,
        "device": str(resolve_device(cfg.model.device)),
        "model_path": model_path,
        "labels": labels,
        # None: not recorded, so no band limit; a bad value is the error classify would give.
        "trained_rate_hz": trained_rate_hz(model_config.get(TRAINED_RATE_KEY), Path(model_path)),
        "tta_speeds": list(tta_speeds(model_config.get(TTA_SPEEDS_KEY), Path(model_path))),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    _setup_logging(args, "warning")
    from intentd.demo import run_demo

    cfg = _config_from_args(args)
    return run_demo(cfg, _load_classifier(cfg))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `intentd` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except IntentdError as e:
        print(f"intentd: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
