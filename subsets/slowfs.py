"""A pyarrow file system that adds latency to every open and read, and counts them.

Network storage (NFS, object stores) costs milliseconds per request, local disk
microseconds; this wrapper makes a local folder behave like the former so benchmarks
and tests can compare access patterns (one file per image vs one ranged read per
block) without a network. ``latency_filesystem(delay_s)`` gives the file system and its
:class:`Counts`; :func:`open_file` gives the same latency to per-file reads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs


@dataclass
class Counts:
    """Requests seen so far (thread-safe)."""

    opens: int = 0
    reads: int = 0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, opens: int = 0, reads: int = 0, nbytes: int = 0) -> None:
        with self.lock:
            self.opens += opens
            self.reads += reads
            self.bytes += nbytes


class _SlowFile:
    """A readable file object over a native file, sleeping ``delay_s`` per read."""

    def __init__(self, raw: pa.NativeFile, delay_s: float, counts: Counts) -> None:
        self.raw, self.delay_s, self.counts = raw, delay_s, counts
        self.closed = False

    def read(self, nbytes: int = -1) -> bytes:
        time.sleep(self.delay_s)
        data = self.raw.read() if nbytes is None or nbytes < 0 else self.raw.read(nbytes)
        self.counts.add(reads=1, nbytes=len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def size(self) -> int:
        return self.raw.size()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        self.raw.close()
        self.closed = True


class LatencyHandler(pafs.FileSystemHandler):
    """Read-only access to ``base`` with ``delay_s`` seconds added per open and per read."""

    def __init__(self, base: pafs.FileSystem, delay_s: float, counts: Counts) -> None:
        self.base, self.delay_s, self.counts = base, delay_s, counts

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LatencyHandler) and other.base == self.base

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "latency"

    def normalize_path(self, path: str) -> str:
        return self.base.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.base.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.base.get_file_info(selector)

    def _open(self, path: str) -> pa.PythonFile:
        time.sleep(self.delay_s)
        self.counts.add(opens=1)
        raw = self.base.open_input_file(path)
        return pa.PythonFile(_SlowFile(raw, self.delay_s, self.counts), mode="r")

    def open_input_file(self, path: str) -> pa.PythonFile:
        return self._open(path)

    def open_input_stream(self, path: str) -> pa.PythonFile:
        return self._open(path)

    def _read_only(self, *args: Any) -> None:
        raise OSError("the latency file system is read-only")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _read_only
    delete_file = move = copy_file = open_output_stream = open_append_stream = _read_only


def latency_filesystem(delay_s: float, base: Any = None) -> tuple[pafs.PyFileSystem, Counts]:
    """A file system over ``base`` (default: local) adding ``delay_s`` per open and read."""
    counts = Counts()
    handler = LatencyHandler(base or pafs.LocalFileSystem(), delay_s, counts)
    return pafs.PyFileSystem(handler), counts


def open_file(path: str, delay_s: float, counts: Counts) -> bytes:
    """Read a whole local file the way a per-file loader does: one open and one read,
    each with ``delay_s`` added."""
    time.sleep(delay_s)
    with open(path, "rb") as fh:
        time.sleep(delay_s)
        data = fh.read()
    counts.add(opens=1, reads=1, nbytes=len(data))
    return data
