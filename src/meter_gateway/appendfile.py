"""Append-only JSON-lines files (audit log, journal checkpoints): recovery of a record torn by a crash."""

from __future__ import annotations

import os

#: how far back from the end a torn record is searched for its line start (records are far shorter)
MAX_RECORD = 1 << 20


def cut_torn_tail(fd: int) -> int:
    """Cut an incomplete last record (no final newline: the process died while appending it) off an open regular
    file; returns the bytes removed.

    Such a record was never complete, so never acknowledged; left in place, the next record would be appended onto
    it and one good record would read as a damaged one in the middle of the file.
    """
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return 0
    if os.pread(fd, 1, size - 1) == b"\n":
        return 0
    start = max(0, size - MAX_RECORD)
    tail = os.pread(fd, size - start, start)
    cut = start + tail.rfind(b"\n") + 1 if b"\n" in tail else start
    os.ftruncate(fd, cut)
    os.fsync(fd)
    return size - cut
