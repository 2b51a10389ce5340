"""The results store of a study: one directory per stage, and the tables that unite them.

Layout under the study's ``output_dir`` (a local path or a URI pyarrow understands,
e.g. ``file:///shared/runs/x`` or ``s3://bucket/runs/x``)::

    study.json                      the resolved study and its hash
    cells.parquet, curves.parquet   the joined view; with pretrain.parquet and
                                    finetune.parquet rebuilt from the stage directories
                                    (:mod:`scaling.study.tables`)
    stages/<kind>/<stage_id>/       one per stage (``pretrain``, ``finetune``,
                                    ``diagnostics``): stage.toml, stage.json, checkpoints,
                                    progress.json, log.txt, curves.parquet, result.parquet

Every write is atomic (a temp name, then a move) and, on a local or shared file
system, durable: the temp file is flushed and fsync'ed before the rename and its
directory after it, so a power cut leaves the old file or the new one, never a torn
one. Parquet pages carry CRC checksums that every read verifies. A file that
still reads back damaged (truncated, empty, flipped bytes, not JSON, not UTF-8) is
reported with its path on the log, read as missing (a stage whose result is damaged
is then incomplete and reruns), and set aside as ``<name>.damaged-<utc>`` beside it,
never deleted; a read-only store (``status``) only reports it. A stage is complete
when its ``result.parquet`` says ``status == "complete"``; the tables are rebuilt from
the stage directories, so no stage or cell ever appears twice.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scaling.errors import UserError

log = logging.getLogger(__name__)


class OutputError(UserError):
    """A study output that cannot be written."""


def _fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (file systems that cannot fsync a directory: skip)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_local(target: str, data: bytes) -> None:
    """Temp file, flush + fsync, rename over ``target``, fsync the directory."""
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(parent)


def probe_local(path: Path) -> None:
    """Raise OSError unless ``path`` exists as a writable folder or could be made in one."""
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{folder} is not writable")
    with tempfile.TemporaryFile(dir=folder):  # a read-only mount, even for root
        pass


class ResultStore:
    """Atomic file access under a study's output directory, local or remote.

    ``set_aside``: move damaged files out of the way as they are found (``run``);
    False for a store that only reads (``status``), which reports them and goes on.
    """

    def __init__(self, uri: str, set_aside: bool = True) -> None:
        self.uri = uri
        self.set_aside_damaged = set_aside
        self._reported: set[str] = set()
        if "://" in uri:
            self.fs, self.base = pafs.FileSystem.from_uri(uri)
        else:
            self.fs, self.base = pafs.LocalFileSystem(), uri
        self.base = self.base.rstrip("/")

    def __reduce__(self) -> tuple[Any, ...]:  # filesystems travel to Ray workers by URI
        return (ResultStore, (self.uri, self.set_aside_damaged))

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def local_path(self, rel: str = "") -> str | None:
        """A path on this machine's file system, or None for a remote store."""
        return self.path(rel) if isinstance(self.fs, pafs.LocalFileSystem) else None

    def check_writable(self) -> None:
        """Refuse an output that cannot be written (read-only, a parent that is a file, no
        bucket, no permission) with the reason, before any work and without creating it: a
        local path probes its nearest existing folder; a remote one writes and removes one
        probe object."""
        try:
            if isinstance(self.fs, pafs.LocalFileSystem):
                probe_local(Path(self.base))
            else:
                probe = f".write-probe-{uuid.uuid4().hex[:8]}"
                self.write_bytes(probe, b"")
                self.delete(probe)
        except OSError as err:
            raise OutputError(f"output_dir {self.uri}: cannot write there ({err})") from None

    # -- bytes -----------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``rel`` atomically (and durably on a local or shared file system)."""
        target = self.path(rel)
        if isinstance(self.fs, pafs.LocalFileSystem):
            _write_local(target, data)
            return
        parent = target.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{target.rsplit('/', 1)[1]}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            self.fs.move(tmp, target)
        finally:
            if self.fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                self.fs.delete_file(tmp)

    def read_bytes(self, rel: str) -> bytes | None:
        """The bytes of ``rel``; None if it is missing, or if on this machine it is no
        readable file (a folder, a symlink loop: then reported as damaged)."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as src:
                return src.read()
        except FileNotFoundError:
            return None
        except OSError as err:
            if not isinstance(self.fs, pafs.LocalFileSystem):
                raise  # a remote store's OSError may be the network: never set a file aside
            return self.damaged(rel, f"not a readable file: {err}")

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))

    def move(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst`` (replacing it); a missing ``src`` is no error."""
        if not self.exists(src):  # S3 reports a missing source as a generic OSError
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.move(self.path(src), self.path(dst))
            if isinstance(self.fs, pafs.LocalFileSystem):
                _fsync_dir(os.path.dirname(self.path(dst)))

    def damaged(self, rel: str, why: str) -> None:
        """Report a damaged file (once per store) and, when allowed, set it aside.

        Returns None, so a reader can ``return self.damaged(...)`` for "missing".
        """
        if rel in self._reported:
            return None
        self._reported.add(rel)
        if not self.set_aside_damaged:
            log.warning("%s: damaged (%s); read as missing", self.path(rel), why)
            return None
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = f"{rel}.damaged-{stamp}"
        if self.exists(aside):
            aside = f"{aside}-{uuid.uuid4().hex[:6]}"
        self.move(rel, aside)
        log.warning(
            "%s: damaged (%s); set aside as %s and read as missing",
            self.path(rel),
            why,
            self.path(aside).rsplit("/", 1)[1],
        )
        return None

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, rel: str, expect: type = dict) -> Any | None:
        """The JSON value of ``rel`` (an ``expect``), or None if missing or damaged."""
        data = self.read_bytes(rel)
        if data is None:
            return None
        try:
            value = json.loads(data)
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            return self.damaged(rel, f"not JSON: {err}")
        if not isinstance(value, expect):
            return self.damaged(rel, f"a JSON {type(value).__name__}, not a {expect.__name__}")
        return value

    def write_table(self, rel: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", write_page_checksum=True)
        self.write_bytes(rel, buf.getvalue())

    def read_table(self, rel: str) -> pa.Table | None:
        """The table in ``rel``, or None if missing or damaged (then reported)."""
        data = self.read_bytes(rel)
        if data is None:
            return None
        try:
            return pq.read_table(io.BytesIO(data), page_checksum_verification=True)
        except (pa.ArrowException, OSError) as err:
            return self.damaged(rel, f"not a readable Parquet file: {err}")

    def folders(self, rel: str) -> list[str]:
        """Names of the folders directly under ``rel``, sorted (none if it is missing)."""
        selector = pafs.FileSelector(self.path(rel), allow_not_found=True)
        return sorted(
            info.base_name
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory
        )

    # -- the flat layout before stages (refused by ``run``) ----------------------------------
    def cell_ids(self) -> list[str]:
        """The ``cells/<cell_id>/`` directories of an earlier mimscale (one per cell)."""
        return self.folders("cells")

    # -- stages ----------------------------------------------------------------------------
    def stage_ids(self, kind: str) -> list[str]:
        """Ids of the stage directories of ``kind`` (``pretrain`` / ``finetune`` / …)."""
        return self.folders(f"stages/{kind}")

    def stage_row(self, kind: str, stage_id: str) -> dict[str, Any] | None:
        """The stage's ``result.parquet`` row (complete or failed), or None."""
        table = self.read_table(f"stages/{kind}/{stage_id}/result.parquet")
        return None if table is None or table.num_rows == 0 else table.to_pylist()[0]

    def stage_complete(self, kind: str, stage_id: str) -> bool:
        row = self.stage_row(kind, stage_id)
        return row is not None and row.get("status") == "complete"

    def write_stage_result(
        self, kind: str, row: dict[str, Any], points: list[dict[str, Any]]
    ) -> None:
        """Curves first, then the result: a complete result always has its curves."""
        from scaling.study.tables import COLUMNS, STAGE_CURVE_COLUMNS, table_of

        stage_id = row["stage_id"]
        base = f"stages/{kind}/{stage_id}"
        curve = [{**p, "stage_id": stage_id} for p in points]
        self.write_table(f"{base}/curves.parquet", table_of(STAGE_CURVE_COLUMNS, curve))
        self.write_table(f"{base}/result.parquet", table_of(COLUMNS[kind], [row]))

    def write_stage_failure(
        self, kind: str, stage_id: str, fields: dict[str, Any], error: str
    ) -> None:
        """Mark a stage failed (its result, status ``failed``), unless it completed meanwhile."""
        from scaling.study.tables import COLUMNS, table_of

        if self.stage_complete(kind, stage_id):
            return
        row = {**fields, "stage_id": stage_id, "status": "failed", "error": error}
        self.write_table(f"stages/{kind}/{stage_id}/result.parquet", table_of(COLUMNS[kind], [row]))

    def stage_curves(self, kind: str, stage_id: str, *, complete: bool = False) -> pa.Table | None:
        """The stage's curve points, or None. ``complete``: its result says complete, and a
        complete stage always has its curves (they are written first); when they are
        missing or damaged, a writable store sets the result aside too, so the stage runs
        again — from its final checkpoint, without training."""
        base = f"stages/{kind}/{stage_id}"
        table = self.read_table(f"{base}/curves.parquet")
        if table is None and complete and self.set_aside_damaged:
            self.damaged(
                f"{base}/result.parquet",
                "its curves.parquet is missing or damaged; the stage runs again (from its "
                "final checkpoint)",
            )
        return table
