"""The joined view: a cell's status and sums from its stages' rows."""

from __future__ import annotations

from scaling.study.tables import CELL_COLUMNS, cell_row

FIELDS = {"cell_id": "c", "pretrain_id": "p", "finetune_id": "f", "model": "m"}


def test_cell_status_from_its_stages() -> None:
    done = {"status": "complete", "wall_s": 2.0, "bad_images": 1, "val_loss": 0.5}
    ft = {"status": "complete", "wall_s": 3.0, "bad_images": 0, "finetune_top1": 40.0}
    row = cell_row(FIELDS, done, ft)
    assert row["status"] == "complete" and row["wall_s"] == 5.0 and row["bad_images"] == 1
    assert row["val_loss"] == 0.5 and row["finetune_top1"] == 40.0
    assert cell_row(FIELDS, done, None)["status"] == "pending"  # its fine-tune not run yet
    stopped = {**ft, "status": "interrupted"}
    assert cell_row(FIELDS, done, stopped)["status"] == "interrupted"
    failed = {**ft, "status": "failed", "error": "CellError: boom"}
    row = cell_row(FIELDS, done, failed)
    assert (row["status"], row["error"]) == ("failed", "CellError: boom")
    assert "bad_val_images" in CELL_COLUMNS and "target" in CELL_COLUMNS
