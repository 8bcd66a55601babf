"""Opening audio files safely (stdlib only): one check shared by the daemon and `intentd send`."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class FileRefused(Exception):
    """A path that is missing, unopenable, or not a regular file; the message is one line."""


def shown(path: str | Path) -> str:
    """A path fit for a one-line message: control characters (a newline in a name) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


def open_regular_file(path: str | Path) -> int:
    """A blocking read descriptor for a regular file; pipes, devices and folders are refused.

    The caller decodes from this descriptor, so what was checked is what gets read.
    """
    name = shown(path)
    try:
        # O_NONBLOCK: opening a named pipe with no writer must fail below, not hang here.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise FileRefused(f"{name}: no such file") from e
    except OSError as e:
        raise FileRefused(f"{name}: cannot open ({e.strerror})") from e
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise FileRefused(f"{name}: is a directory, not an audio file")
        if not stat.S_ISREG(mode):
            # A pipe or device has no end a replay can reach, and may block forever.
            raise FileRefused(f"{name}: is not a regular file (a pipe or device); give an audio file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
