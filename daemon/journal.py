"""Logging setup for the entry point: syslog-priority lines for the journal, timestamps otherwise."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from intentd.errors import ConfigError

log = logging.getLogger(__name__)

JOURNAL_STREAM_ENV = "JOURNAL_STREAM"
INVOCATION_ID_ENV = "INVOCATION_ID"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"

# sd-daemon(3) prefixes, checked from the most severe down so custom levels fall in between.
_PRIORITIES = (
    (logging.CRITICAL, 2),  # crit
    (logging.ERROR, 3),  # err
    (logging.WARNING, 4),  # warning
    (logging.INFO, 6),  # info
)
_DEBUG_PRIORITY = 7
# Marks the handler we installed, so a second setup_logging() replaces it and nothing else.
_HANDLER_NAME = "intentd"


def syslog_priority(levelno: int) -> int:
    """The syslog priority (0-7) journald should record for a Python logging level."""
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return _DEBUG_PRIORITY


class JournalFormatter(logging.Formatter):
    """`<N>logger: message`, with every line of a multi-line record (tracebacks) prefixed."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """Format the record; journald splits on newlines, so each line carries the priority."""
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def under_journal(environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> bool:
    """True when `stream` (default stderr) goes to journald or another systemd log sink."""
    env = os.environ if environ is None else environ
    journal_stream = env.get(JOURNAL_STREAM_ENV)
    if journal_stream:
        # systemd.exec(5): compare device:inode, because the variable is inherited by anything
        # the service starts and stays set when stderr is redirected (StandardError=file:...).
        return _stream_is(journal_stream, sys.stderr if stream is None else stream)
    # A service without a journal stream (StandardError=syslog or kmsg) still has its
    # priority prefixes parsed by systemd and gets timestamps from the sink.
    return bool(env.get(INVOCATION_ID_ENV))


def _stream_is(journal_stream: str, stream: TextIO) -> bool:
    try:
        dev_s, ino_s = journal_stream.split(":", 1)
        dev, ino = int(dev_s), int(ino_s)
    except ValueError:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        # No file descriptor to compare (an in-memory stream): trust the variable.
        return True
    return (st.st_dev, st.st_ino) == (dev, ino)


def parse_level(level: int | str) -> int:
    """A logging level from an int or a name such as "info" or "DEBUG"; ConfigError if unknown."""
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ConfigError(f"unknown log level {level!r}: use debug, info, warning or error")
    return value


def setup_logging(
    level: int | str = logging.INFO,
    *,
    journal: bool | None = None,
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Install the one root handler: journal format under systemd, timestamped text otherwise.

    `journal` forces the choice; by default it is detected from the environment and stderr.
    Calling it again replaces the handler it installed before.
    """
    out = sys.stderr if stream is None else stream
    use_journal = under_journal(environ, out) if journal is None else journal
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JournalFormatter() if use_journal else logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    log.debug("logging to %s", "the journal" if use_journal else "stderr")
    return handler
