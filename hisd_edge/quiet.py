"""Libraries' console chatter (OpenCV, libpng, libjpeg, FFmpeg, numpy) behind ``-v``.

A refusal must be the one line the user reads, not the last of a screenful that C libraries wrote
to the terminal first. Python warnings are routed by the CLI (:func:`hisd_edge.cli.main`); what C
code writes straight to file descriptor 2 is captured around the calls that make it
(:func:`native_stderr`) and logged at debug level, which ``hisd-edge -v`` shows.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
import threading
from typing import IO, Iterator

LOG = logging.getLogger("hisd_edge.libraries")
_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def _sink() -> IO[bytes]:
    """One anonymous temporary file for the whole process, reused by every capture."""
    return tempfile.TemporaryFile()


def verbose() -> bool:
    """True under ``hisd-edge -v`` (debug logging): then libraries may speak for themselves."""
    return logging.getLogger("hisd_edge").isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def native_stderr() -> Iterator[None]:
    """Capture what native code writes to stderr (fd 2) during the block; log it at debug level.

    Does nothing under ``-v``, in a nested use, or while another thread holds the capture.
    """
    if verbose() or not _lock.acquire(blocking=False):
        yield
        return
    try:
        sink = _sink()
        saved = os.dup(2)
    except OSError:
        _lock.release()
        yield
        return
    try:
        sys.stderr.flush()
        sink.seek(0)
        sink.truncate()
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        sink.seek(0)
        captured = sink.read(1 << 16).decode("utf-8", errors="replace")
        _lock.release()
        for line in captured.splitlines():
            if line.strip():
                LOG.debug("%s", line.rstrip())
