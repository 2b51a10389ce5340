"""The results tables of a study: one per stage kind, and the cells as their joined view.

::

    pretrain.parquet   one row per pre-training stage (trunks, branches, single runs)
    finetune.parquet   one row per fine-tuning stage (its ``pretrain_id`` joins it)
    cells.parquet      one row per grid cell = pre-training × fine-tuning, the columns
                       ``analyze`` and users' scripts read (plus the two stage ids)
    curves.parquet     every logged point of every cell, by ``cell_id`` (a pre-training
                       curve shared by several cells appears under each of them)
    diagnostics.parquet  with ``[diagnostics] enabled``: every cell's encoder diagnostics,
                       long format (per layer and head, summary scalars at layer −1)

Each stage writes ``stages/<kind>/<id>/result.parquet`` and ``curves.parquet``; these
tables are rebuilt from them, so no stage or cell ever appears twice.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

PRETRAIN_COLUMNS: dict[str, pa.DataType] = {
    "stage_id": pa.string(),
    "model": pa.string(),
    "params_m": pa.float64(),
    "data": pa.string(),
    "n_train_images": pa.int64(),
    "iterations": pa.int64(),
    "batch_size": pa.int64(),
    "epochs_seen": pa.float64(),
    "seed": pa.int64(),
    "mask_ratio": pa.float64(),
    "method": pa.string(),
    "status": pa.string(),
    "train_loss": pa.float64(),
    "val_loss": pa.float64(),
    "pretrain_flops": pa.float64(),
    "gpu_hours": pa.float64(),
    "wall_s": pa.float64(),
    "bad_images": pa.int64(),
    "bad_val_images": pa.int64(),
    "error": pa.string(),
    "trunk_id": pa.string(),
    "fork_step": pa.int64(),
}
FINETUNE_COLUMNS: dict[str, pa.DataType] = {
    "stage_id": pa.string(),
    "pretrain_id": pa.string(),
    "target": pa.string(),
    "status": pa.string(),
    "finetune_top1": pa.float64(),
    "finetune_top5": pa.float64(),
    "gpu_hours": pa.float64(),
    "wall_s": pa.float64(),
    "bad_images": pa.int64(),
    "error": pa.string(),
}
DIAGNOSTICS_COLUMNS: dict[str, pa.DataType] = {
    "stage_id": pa.string(),
    "pretrain_id": pa.string(),
    "images": pa.int64(),
    "status": pa.string(),
    "wall_s": pa.float64(),
    "bad_images": pa.int64(),
    "error": pa.string(),
}
DIAGNOSTIC_ROW_COLUMNS: dict[str, pa.DataType] = {
    "cell_id": pa.string(),
    "pretrain_id": pa.string(),
    "diagnostics_id": pa.string(),
    "method": pa.string(),
    "model": pa.string(),
    "layer": pa.int64(),
    "head": pa.int64(),
    "other": pa.int64(),
    "metric": pa.string(),
    "value": pa.float64(),
}
"""``diagnostics.parquet``, long format: per layer and head (``head`` −1: per layer;
``other``: CKA's second layer), and the summary scalars with ``layer`` −1."""
CELL_COLUMNS: dict[str, pa.DataType] = {
    "cell_id": pa.string(),
    "pretrain_id": pa.string(),
    "finetune_id": pa.string(),
    **{k: v for k, v in PRETRAIN_COLUMNS.items() if k not in ("stage_id", "trunk_id")},
    "finetune_top1": pa.float64(),
    "finetune_top5": pa.float64(),
    "target": pa.string(),
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
STAGE_CURVE_COLUMNS = {"stage_id": pa.string(), **{k: v for k, v in CURVE_COLUMNS.items()}}
STAGE_CURVE_COLUMNS.pop("cell_id")
COLUMNS = {
    "pretrain": PRETRAIN_COLUMNS,
    "finetune": FINETUNE_COLUMNS,
    "diagnostics": DIAGNOSTICS_COLUMNS,
}


def table_of(columns: dict[str, pa.DataType], rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as a table of exactly ``columns`` (missing values null, extra keys dropped)."""
    schema = pa.schema(list(columns.items()))
    return pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows], schema=schema)


def cell_row(
    cell_fields: dict[str, Any], pre: dict[str, Any] | None, ft: dict[str, Any] | None
) -> dict[str, Any]:
    """One cell of the joined view from its stages' rows (None: not written yet).

    Status: ``complete`` when every stage is; else ``failed`` when one failed (its error);
    else ``pending``. Wall time, GPU-hours and bad images add up over the stages.
    """
    row = {**cell_fields, **{k: v for k, v in (pre or {}).items() if k in CELL_COLUMNS}}
    stages = [s for s in (pre, ft) if s is not None]
    if ft is not None:
        for key in ("finetune_top1", "finetune_top5"):
            row[key] = ft.get(key)
    expected = 2 if row.get("finetune_id") else 1
    failed = [s for s in stages if s.get("status") == "failed"]
    if failed:
        row["status"], row["error"] = "failed", failed[0].get("error")
    elif len(stages) == expected and all(s.get("status") == "complete" for s in stages):
        row["status"] = "complete"
    elif any(s.get("status") == "interrupted" for s in stages):
        row["status"] = "interrupted"  # stopped by Ctrl-C / SIGTERM; the next run resumes it
    else:
        row["status"] = "pending"
    for key in ("wall_s", "gpu_hours", "bad_images"):
        values = [s.get(key) for s in stages if s.get(key) is not None]
        row[key] = sum(values) if values else None
    return row


def _checked_curves(
    store: Any, kind: str, rows: dict[str, dict[str, Any] | None]
) -> dict[str, list[dict[str, Any]]]:
    """The curve points of each stage with a row. A complete stage whose curves file is
    missing or damaged is set aside whole (its result too; its row becomes None in
    ``rows``): the next run writes both again from its final checkpoint, without training
    (:meth:`~scaling.study.store.ResultStore.stage_curves`)."""
    curves = {}
    for stage_id, row in rows.items():
        if row is None:
            continue
        complete = row.get("status") == "complete"
        table = store.stage_curves(kind, stage_id, complete=complete)
        if table is None and complete and store.set_aside_damaged:
            rows[stage_id] = None  # set aside with its curves: it runs again
        curves[stage_id] = [] if table is None else table.to_pylist()
    return curves


def write_tables(store: Any, graph: Any) -> tuple[pa.Table, pa.Table]:
    """Rebuild the four tables from the stage directories of ``graph``'s stages; returns
    (cells, curves). Cells with no stage result yet are left out."""
    pre = {i: store.stage_row("pretrain", i) for i in graph.pretrain}
    ft = {i: store.stage_row("finetune", i) for i in graph.finetune}
    stage_curves = {
        **{("pretrain", i): c for i, c in _checked_curves(store, "pretrain", pre).items()},
        **{("finetune", i): c for i, c in _checked_curves(store, "finetune", ft).items()},
    }
    for stage_id, row in pre.items():
        if row is not None:
            stage = graph.pretrain[stage_id]
            row.update(trunk_id=stage.trunk_id, fork_step=stage.fork_step)
    store.write_table("pretrain.parquet", table_of(PRETRAIN_COLUMNS, _present(pre)))
    store.write_table("finetune.parquet", table_of(FINETUNE_COLUMNS, _present(ft)))
    rows, curves = [], []

    def curve_of(kind: str, stage_id: str) -> list[dict[str, Any]]:
        return stage_curves.get((kind, stage_id), [])

    for cell, pid, fid in graph.cells:
        if pre[pid] is None and (fid is None or ft[fid] is None):
            continue
        cid = fid or pid
        fields = {**cell.row_fields(), "cell_id": cid, "pretrain_id": pid, "finetune_id": fid}
        rows.append(cell_row(fields, pre[pid], ft[fid] if fid else None))
        for kind, stage_id in (("pretrain", pid), ("finetune", fid)):
            if stage_id is not None:
                curves += [{**p, "cell_id": cid} for p in curve_of(kind, stage_id)]
    cells, curve = table_of(CELL_COLUMNS, rows), table_of(CURVE_COLUMNS, curves)
    store.write_table("cells.parquet", cells)
    store.write_table("curves.parquet", curve)
    if getattr(graph, "diagnostics", None):
        store.write_table("diagnostics.parquet", diagnostics_table(store, graph))
    return cells, curve


def diagnostics_table(store: Any, graph: Any) -> pa.Table:
    """Every cell's diagnostics (complete stages only), keyed by cell and stage ids."""
    rows: list[dict[str, Any]] = []
    read: dict[str, list[dict[str, Any]]] = {}
    for cell, pid, fid in graph.cells:
        did = graph.diagnostics_of.get(pid)
        if did is None or not store.stage_complete("diagnostics", did):
            continue
        if did not in read:
            table = store.read_table(f"stages/diagnostics/{did}/diagnostics.parquet")
            read[did] = [] if table is None else table.to_pylist()
        keys = {"cell_id": fid or pid, "pretrain_id": pid, "diagnostics_id": did,
                "method": cell.method, "model": cell.model}  # fmt: skip
        rows += [{**keys, **r} for r in read[did]]
    return table_of(DIAGNOSTIC_ROW_COLUMNS, rows)


def _present(rows: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    return [r for r in rows.values() if r is not None]
