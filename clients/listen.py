"""`intentd listen`: print a running daemon's intent events, one line each.

Events go to stdout (a readable line, or the v1 JSON with --json); gaps, restarts and lost
heartbeats go to stderr in both modes, so stdout stays a clean stream to pipe into other tools.
Also runnable without the daemon installed: `python -m intentd_client.listen ENDPOINT`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from types import FrameType
from typing import TextIO

import zmq

from intentd_client.keys import KeyFileError, add_key_arguments, keys_from_args
from intentd_client.protocol import IntentEvent
from intentd_client.subscriber import DEFAULT_HEARTBEAT_TIMEOUT_S, Notice, StreamStats, Subscriber

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_USAGE = 2


class _Terminated(Exception):
    """Raised from the SIGTERM handler to unwind the receive loop like Ctrl-C does."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `listen` subcommand to the intentd CLI; it sets `func=run`."""
    p = subparsers.add_parser(
        "listen",
        help="print the intent events of a running daemon",
        description="Print the intent events of a running daemon: events to stdout, "
        "gaps, restarts and lost heartbeats to stderr.",
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the listen options to a parser."""
    p.add_argument(
        "endpoint",
        metavar="ENDPOINT",
        help="daemon's PUB endpoint, e.g. tcp://127.0.0.1:5556 or ipc:///run/intentd.sock",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print each event as one line of v1 JSON instead of a readable line",
    )
    p.add_argument(
        "--intent",
        action="append",
        metavar="X",
        dest="intents",
        help="only events of this intent (repeatable)",
    )
    p.add_argument("--min-score", type=_score, metavar="S", help="only events with score >= S (0..1)")
    p.add_argument(
        "--heartbeat-timeout",
        type=_positive,
        metavar="S",
        default=DEFAULT_HEARTBEAT_TIMEOUT_S,
        help="report the daemon as down after S seconds without a message "
        f"(default {DEFAULT_HEARTBEAT_TIMEOUT_S})",
    )
    add_key_arguments(p)


def _score(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"score must be within 0..1, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _local_time(wall_time: float) -> str:
    return datetime.fromtimestamp(wall_time).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def format_event(event: IntentEvent) -> str:
    """The readable line: local time, intent, score, source, end-to-end latency."""
    return (
        f"{_local_time(event.wall_time)}  {event.intent:<24} {event.score:.2f}  "
        f"{event.source}  {event.latency_ms.total:.0f} ms"
    )


def format_notice(notice: Notice) -> str:
    """A notice line for stderr, stamped with the local time it was noticed."""
    return f"{_local_time(time.time())}  # {notice.describe()}"


def format_stats(stats: StreamStats) -> str:
    """The one-line summary printed on exit."""
    return (
        f"# {stats.intents - stats.filtered} event(s) shown, {stats.filtered} filtered, "
        f"{stats.gaps} gap(s) ({stats.missed} missed), {stats.restarts} restart(s), "
        f"{stats.malformed} malformed, {stats.wrong_version} of another version"
    )


def run(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Print events until Ctrl-C or SIGTERM; returns the exit status."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        sub = Subscriber(
            args.endpoint,
            intents=args.intents,
            min_score=args.min_score,
            heartbeat_timeout_s=args.heartbeat_timeout,
            keys=keys_from_args(args),
        )
    except KeyFileError as e:
        print(f"intentd listen: {e}", file=err)
        return EXIT_USAGE
    except zmq.ZMQError as e:
        print(
            f"intentd listen: cannot connect to {args.endpoint!r}: {e} (use tcp://HOST:PORT or ipc://PATH)",
            file=err,
        )
        return EXIT_USAGE
    restore = _install_sigterm()
    try:
        with sub:
            for item in sub:
                if isinstance(item, IntentEvent):
                    print(item.to_json() if args.json else format_event(item), file=out, flush=True)
                elif isinstance(item, Notice):
                    print(format_notice(item), file=err, flush=True)
    except (KeyboardInterrupt, _Terminated):
        pass
    except BrokenPipeError:
        # The reader went away (`| head`): not an error; keep the exit from writing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    finally:
        restore()
    print(format_stats(sub.stats), file=err, flush=True)
    return EXIT_OK


def _install_sigterm() -> Callable[[], object]:
    """Make SIGTERM unwind like Ctrl-C; returns a function that restores the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m intentd_client.listen`."""
    parser = argparse.ArgumentParser(prog="intentd listen", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
