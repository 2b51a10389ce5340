"""The diagnostics stage: representation statistics of a pre-trained encoder, never retraining.

It reads the encoder from its pre-training stage's result checkpoint (as fine-tuning
does), builds the registered encoder at the pre-training image size, and runs
:func:`scaling.model.diagnostics.diagnose` over the diagnostic set — the ``images``
smallest manifest keys of ``data.val``, centre crops as for the validation loss, in
batches of ``batch_size``. Per-batch statistics are averaged with the batches' image
counts as weights (attention statistics are means over images already; CKA is the
weighted mean of each batch's CKA). It writes ``diagnostics.parquet`` in its stage
directory — long format, per layer and head, and the summary scalars with layer −1 —
before its result row (which marks completion).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa
import torch

from scaling.cell.context import TrialContext

log = logging.getLogger(__name__)

_PER_LAYER = ("distance_px", "entropy", "nmi", "head_kl", "cka")


def _weighted(values: list[Any], weights: list[float]) -> Any:
    """The weighted mean of equally nested lists of floats."""
    if isinstance(values[0], list):
        return [_weighted(list(col), weights) for col in zip(*values, strict=True)]
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)


def mean_diagnostics(parts: list[Any], weights: list[float]) -> Any:
    """One :class:`~scaling.model.diagnostics.Diagnostics` from per-batch ones."""
    from scaling.model.diagnostics import Diagnostics

    fields = {k: _weighted([getattr(p, k) for p in parts], weights) for k in _PER_LAYER}
    return Diagnostics(**fields)


def diagnostic_rows(diag: Any) -> list[dict[str, Any]]:
    """``diag.rows()`` plus its summary scalars (``layer``, ``head``, ``other`` = −1)."""
    summary = [
        {"layer": -1, "head": -1, "other": -1, "metric": name, "value": float(value)}
        for name, value in diag.summary().items()
    ]
    return [*diag.rows(), *summary]


STAGE_COLUMNS: dict[str, pa.DataType] = {
    "layer": pa.int64(),
    "head": pa.int64(),
    "other": pa.int64(),
    "metric": pa.string(),
    "value": pa.float64(),
}
"""A stage's ``diagnostics.parquet``; the study's table adds the cell and stage keys."""


@torch.no_grad()
def diagnose_encoder(ctx: TrialContext, encoder_state: dict[str, torch.Tensor]) -> tuple:
    """(diagnostics, images seen, bad images) of the encoder on the cell's diagnostic set."""
    from scaling.data.pretrain import build_val_loader, normalize
    from scaling.model.build import create_encoder
    from scaling.model.diagnostics import diagnose
    from scaling.model.methods import get_method
    from scaling.model.sizes import get_spec

    cell, d = ctx.cell, ctx.cell.diagnostics
    img = cell.pretrain.image_size
    encoder = create_encoder(cell.model, img_size=img)
    encoder.load_state_dict(encoder_state)
    encoder.to(ctx.device).eval()
    loader = build_val_loader(
        manifest=cell.data_config.manifest(cell.data_config.val),
        root=cell.data_config.root,
        image_size=img,
        mask=get_method(cell.method).masks(get_spec(cell.model), cell.recipe, img),  # unused
        batch_size=d.batch_size,
        num_workers=cell.data_config.num_workers,
        limit=d.images,
    )
    parts, weights = [], []
    for images, _ in loader:
        parts.append(diagnose(encoder, normalize(images, ctx.device)))
        weights.append(float(len(images)))
    return mean_diagnostics(parts, weights), int(sum(weights)), len(loader.counter.bad)


def run_diagnostics(
    ctx: TrialContext, pretrain_id: str, encoder_state: dict[str, torch.Tensor]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Diagnose the encoder of ``pretrain_id``; writes ``diagnostics.parquet`` and returns
    the stage's row (and no curve points)."""
    import io

    import pyarrow.parquet as pq

    start = time.perf_counter()
    log.info("diagnostics %s of pre-training %s", ctx.stage_id, pretrain_id)
    diag, images, bad = diagnose_encoder(ctx, encoder_state)
    rows = diagnostic_rows(diag)
    schema = pa.schema(list(STAGE_COLUMNS.items()))
    if ctx.is_main:
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, compression="zstd")
        ctx.store.write_bytes(ctx.rel("diagnostics.parquet"), buf.getvalue())
    row = {
        "stage_id": ctx.stage_id,
        "pretrain_id": pretrain_id,
        "images": images,
        "status": "complete",
        "wall_s": time.perf_counter() - start,
        "bad_images": bad,
        "error": None,
    }
    return row, []
