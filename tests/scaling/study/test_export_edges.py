"""``mimscale export`` of a study whose fine-tuning checkpoint is damaged (found by an
adversarial pass over the CLI's inputs: the encoder was written, then the classifier's
checkpoint failed with exit 2, leaving ``--out/<cell>/encoder`` and no ``index.json``).
A refused export leaves ``--out`` as it was: absent, or with what it held."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaling.cli import main


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path):
    """A one-cell study, pre-trained and fine-tuned (about 4 s)."""
    from study_helpers import run_every_stage, tiny_tables, write_study

    tmp = tmp_path_factory.mktemp("export_edges")
    tables = tiny_tables(
        demo_dir,
        tmp / "out",
        grid={"models": ["vit-nano"], "data": ["demo-25pct"], "iterations": [4]},
        finetune={"enabled": True, "image_size": 32, "epochs": 0.1, "batch_size": 8},
    )
    path = write_study(tmp / "study.toml", tables)
    study, graph, _ = run_every_stage(path)
    ((_, _, fid),) = graph.cells
    return path, Path(study.output_dir) / "stages" / "finetune" / fid / "finetune.pt"


@pytest.fixture
def flipped(finished):
    """The study with one byte of its fine-tuning checkpoint flipped (restored after)."""
    path, ckpt = finished
    good = ckpt.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    ckpt.write_bytes(bytes(bad))
    yield path, ckpt
    ckpt.write_bytes(good)


def test_a_damaged_classifier_checkpoint_writes_nothing(flipped, tmp_path: Path, capsys) -> None:
    path, ckpt = flipped
    out = tmp_path / "new" / "exported"
    assert main(["export", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    stage = ckpt.parent.name
    assert f"error: stage {stage} is complete but its final checkpoint {ckpt} is damaged" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_a_refused_export_leaves_an_earlier_export_as_it_was(
    finished, tmp_path: Path, capsys
) -> None:
    path, ckpt = finished
    out = tmp_path / "exported"
    assert main(["export", str(path), "--out", str(out)]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path(ckpt.parent.name, "classifier", "model.safetensors") in before
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 2])
    try:
        assert main(["export", str(path), "--out", str(out)]) == 2
    finally:
        ckpt.write_bytes(good)
    assert "is damaged or missing" in capsys.readouterr().err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in out.iterdir()) == sorted(
        {str(k.parts[0]) for k in before}
    )
    assert main(["export", str(path), "--out", str(out)]) == 0, "and it exports once intact"
    assert {p.relative_to(out) for p in out.rglob("*") if p.is_file()} == set(before)
