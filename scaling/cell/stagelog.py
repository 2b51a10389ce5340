"""A stage's log in the results store, beside its results: ``stages/<kind>/<id>/log.txt``.

While a stage runs, :class:`StageLog` adds a handler to this process's root logger, so
every record of the stage (mimscale's at INFO and above, warnings of the libraries, the
traceback of a crash) goes to its log. Rank 0 writes ``log.txt``: on a local or shared
file system it appends to it directly (``mimscale logs --follow`` sees each line as it
is written); on an object store it writes a local file and uploads it every
``upload_s`` seconds and at the end (object stores cannot append: each upload is the
whole log so far, the earlier attempts' part included). The other ranks write a local
file and upload it as ``log.rank<r>.txt`` only when the stage crashes there. Every
attempt starts with a header line, so a retried stage's log reads as its history.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from types import TracebackType
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CAPTURED = ("scaling", "subsets")
"""Loggers raised to INFO while a stage runs (a Ray worker's root logger may be at WARNING)."""


def log_name(rank: int) -> str:
    """The log file of ``rank`` in its stage's directory."""
    return "log.txt" if rank == 0 else f"log.rank{rank}.txt"


class _Handler(logging.FileHandler):
    """A file handler that hands its file to ``upload`` every ``upload_s`` seconds."""

    def __init__(self, path: str, upload: Any, upload_s: float) -> None:
        super().__init__(path, mode="a", encoding="utf-8")
        self.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        self.upload, self.upload_s, self.last = upload, upload_s, time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if self.upload is not None and time.monotonic() - self.last >= self.upload_s:
            self.last = time.monotonic()
            self.flush()
            self.upload()


class StageLog:
    """``with StageLog(store, stage_dir, rank):`` — the stage's records go to its log."""

    def __init__(self, store: Any, stage_dir: str, *, rank: int = 0, upload_s: float = 60.0):
        self.store, self.rank, self.upload_s = store, rank, upload_s
        self.rel = f"{stage_dir}/{log_name(rank)}"
        local = getattr(store, "local_path", lambda rel: None)(self.rel)
        self.direct = rank == 0 and local is not None
        self.prefix = b""
        if self.direct:
            os.makedirs(os.path.dirname(local), exist_ok=True)
            self.path = local
        else:
            fd, self.path = tempfile.mkstemp(prefix="mimscale-stage-", suffix=".log")
            os.close(fd)
            if rank == 0:  # an object store: the earlier attempts' log goes first
                self.prefix = store.read_bytes(self.rel) or b""
        self._levels: dict[str, int] = {}

    def __enter__(self) -> StageLog:
        upload = self.upload if self.rank == 0 and not self.direct else None
        self.handler = _Handler(self.path, upload, self.upload_s)
        logging.getLogger().addHandler(self.handler)
        for name in CAPTURED:
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() > logging.INFO:
                self._levels[name] = logger.level
                logger.setLevel(logging.INFO)
        logging.getLogger(__name__).info(
            "--- %s, rank %d, on %s (pid %d) ---",
            self.rel.rsplit("/", 1)[0],
            self.rank,
            socket.gethostname(),
            os.getpid(),
        )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if err is not None:  # the traceback into the stage's log (the caller re-raises)
            logging.getLogger(__name__).error(
                "stage failed: %s: %s", kind.__name__ if kind else "", err, exc_info=err
            )
        logging.getLogger().removeHandler(self.handler)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self.handler.close()
        if not self.direct:
            if self.rank == 0 or err is not None:  # other ranks: only on a crash
                self.upload()
            os.unlink(self.path)

    def upload(self) -> None:
        """Write the whole log so far to the store (object stores cannot append)."""
        with open(self.path, "rb") as src:
            self.store.write_bytes(self.rel, self.prefix + src.read())
