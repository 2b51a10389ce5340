"""The results store of a study: one directory per cell, and the tables that unite them.

Layout under the study's ``output_dir`` (a local path or a URI pyarrow understands,
e.g. ``file:///shared/runs/x`` or ``s3://bucket/runs/x``)::

    study.json                  the resolved study and its hash
    cells.parquet               one row per cell (the union of cells/*/row.parquet)
    curves.parquet              every logged point (the union of cells/*/curves.parquet)
    cells/<cell_id>/cell.toml   the cell's resolved config (``mimscale trial`` reruns it)
    cells/<cell_id>/cell.json   its identity: config + manifest digests
    cells/<cell_id>/checkpoint.pt, progress.json, row.parquet, curves.parquet

Every write is atomic (a temp name, then a move). A cell is complete when its
``row.parquet`` says ``status == "complete"``; the union tables are rebuilt from
the cell directories, so no cell ever appears twice.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

CELL_COLUMNS: dict[str, pa.DataType] = {
    "cell_id": pa.string(),
    "model": pa.string(),
    "params_m": pa.float64(),
    "data": pa.string(),
    "n_train_images": pa.int64(),
    "iterations": pa.int64(),
    "batch_size": pa.int64(),
    "epochs_seen": pa.float64(),
    "seed": pa.int64(),
    "mask_ratio": pa.float64(),
    "status": pa.string(),
    "train_loss": pa.float64(),
    "val_loss": pa.float64(),
    "finetune_top1": pa.float64(),
    "finetune_top5": pa.float64(),
    "pretrain_flops": pa.float64(),
    "gpu_hours": pa.float64(),
    "wall_s": pa.float64(),
    "bad_images": pa.int64(),
    "error": pa.string(),
}
CURVE_COLUMNS: dict[str, pa.DataType] = {
    "cell_id": pa.string(),
    "phase": pa.string(),
    "step": pa.int64(),
    "split": pa.string(),
    "metric": pa.string(),
    "value": pa.float64(),
    "lr": pa.float64(),
}
CELL_SCHEMA = pa.schema(list(CELL_COLUMNS.items()))
CURVE_SCHEMA = pa.schema(list(CURVE_COLUMNS.items()))


def cells_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(
        [{k: r.get(k) for k in CELL_COLUMNS} for r in rows], schema=CELL_SCHEMA
    )


def curves_table(points: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(
        [{k: p.get(k) for k in CURVE_COLUMNS} for p in points], schema=CURVE_SCHEMA
    )


class ResultStore:
    """Atomic file access under a study's output directory, local or remote."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        if "://" in uri:
            self.fs, self.base = pafs.FileSystem.from_uri(uri)
        else:
            self.fs, self.base = pafs.LocalFileSystem(), uri
        self.base = self.base.rstrip("/")

    def __reduce__(self) -> tuple[Any, ...]:  # filesystems travel to Ray workers by URI
        return (ResultStore, (self.uri,))

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def local_path(self, rel: str = "") -> str | None:
        """A path on this machine's file system, or None for a remote store."""
        return self.path(rel) if isinstance(self.fs, pafs.LocalFileSystem) else None

    # -- bytes -----------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def write_bytes(self, rel: str, data: bytes) -> None:
        target = self.path(rel)
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
        try:
            with self.fs.open_input_stream(self.path(rel)) as src:
                return src.read()
        except FileNotFoundError:
            return None

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, rel: str) -> Any | None:
        data = self.read_bytes(rel)
        return None if data is None else json.loads(data)

    def write_table(self, rel: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes(rel, buf.getvalue())

    def read_table(self, rel: str) -> pa.Table | None:
        data = self.read_bytes(rel)
        return None if data is None else pq.read_table(io.BytesIO(data))

    # -- cells -----------------------------------------------------------------------------
    def cell_ids(self) -> list[str]:
        selector = pafs.FileSelector(self.path("cells"), allow_not_found=True)
        return sorted(
            info.base_name
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory
        )

    def cell_row(self, cell_id: str) -> dict[str, Any] | None:
        table = self.read_table(f"cells/{cell_id}/row.parquet")
        return None if table is None or table.num_rows == 0 else table.to_pylist()[0]

    def is_complete(self, cell_id: str) -> bool:
        row = self.cell_row(cell_id)
        return row is not None and row.get("status") == "complete"

    def write_cell_result(self, row: dict[str, Any], points: list[dict[str, Any]]) -> None:
        """Curves first, then the row: a row marked complete always has its curves."""
        cell_id = row["cell_id"]
        self.write_table(f"cells/{cell_id}/curves.parquet", curves_table(points))
        self.write_table(f"cells/{cell_id}/row.parquet", cells_table([row]))

    def write_failure(self, cell_id: str, fields: dict[str, Any], error: str) -> None:
        """Mark a cell failed (its row, status ``failed``), unless it completed meanwhile."""
        if self.is_complete(cell_id):
            return
        row = {**fields, "cell_id": cell_id, "status": "failed", "error": error}
        self.write_table(f"cells/{cell_id}/row.parquet", cells_table([row]))

    def consolidate(self, cell_ids: list[str] | None = None) -> tuple[pa.Table, pa.Table]:
        """Rebuild ``cells.parquet`` and ``curves.parquet`` from the cell directories."""
        rows, curves = [], []
        for cell_id in cell_ids if cell_ids is not None else self.cell_ids():
            row = self.cell_row(cell_id)
            if row is None:
                continue
            rows.append(row)
            table = self.read_table(f"cells/{cell_id}/curves.parquet")
            if table is not None:
                curves.append(table.cast(CURVE_SCHEMA))
        cells = cells_table(rows)
        curve = pa.concat_tables(curves) if curves else curves_table([])
        self.write_table("cells.parquet", cells)
        self.write_table("curves.parquet", curve)
        return cells, curve
