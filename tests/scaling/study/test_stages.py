"""The study as a graph of stages, on a real local Ray instance.

A trunk trains the longest length and seeds each shorter one at its fork step; the
branch must equal an independent run of its length bit for bit on the CPU — weights,
validation curve, final val loss, fine-tuned top-1 — also when the trunk crashes and
resumes before the fork. A fine-tuning change reruns fine-tuning only, and a study grown
by a longer length continues from the longest prefix already trained.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from study_helpers import tiny_tables, write_study

from scaling.cli import main
from scaling.config.load import load_study
from scaling.study.store import ResultStore

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

SHARED = {  # multistep, warm-up in steps: lengths 4 and 8 agree until step 3 (0.75 × 4)
    "schedule": "multistep",
    "warmup_fraction": 0.0,
    "warmup_steps": 1,
    "milestones": [0.75],
    "drop_path": 0.1,  # drop path draws from the RNG: the fork checkpoint must carry it
    "val_interval": 2,
    "checkpoint_interval": 2,
    "log_interval": 2,  # the fork step (3) falls inside a log window
}
FINETUNE = {"enabled": True, "image_size": 32, "epochs": 0.05, "batch_size": 8}
COLUMNS = ["train_loss", "val_loss", "finetune_top1", "finetune_top5", "n_train_images"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _study(tmp_path: Path, data: Path, name: str, lengths: list[int], **grid: Any) -> Path:
    tables = tiny_tables(
        data,
        tmp_path / name,
        grid={"iterations": lengths, **grid},
        pretrain=SHARED,
        finetune=FINETUNE,
    )
    return write_study(tmp_path / f"{name}.toml", tables)


def _roles(path: Path) -> tuple[str, str]:
    """(trunk id, branch id) of a two-length study."""
    from scaling.config.identity import cell_digests, study_subsets
    from scaling.study.stages import build_graph

    study = load_study(path)
    subsets = study_subsets(study)
    graph = build_graph([(c, cell_digests(c, subsets)) for c in study.cells()])
    by_role = {s.role: s.stage_id for s in graph.pretrain.values()}
    return by_role["trunk"], by_role["branch"]


def _tables(path: Path) -> tuple[Any, Any, ResultStore]:
    store = ResultStore(load_study(path).output_dir)
    cells = store.read_table("cells.parquet").to_pandas().sort_values("iterations")
    curves = store.read_table("curves.parquet").to_pandas()
    return cells.reset_index(drop=True), curves, store


def _encoder(store: ResultStore, pretrain_id: str) -> dict[str, torch.Tensor]:
    data = store.read_bytes(f"stages/pretrain/{pretrain_id}/checkpoint.pt")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    return state["state"]["encoder"]


def test_a_branch_equals_an_independent_run_bit_for_bit(
    tmp_path: Path, demo_dir: Path, local_ray: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    shared = _study(tmp_path, demo_dir, "shared", [4, 8])
    trunk_id, branch_id = _roles(shared)
    trunk_crash, branch_crash = tmp_path / "trunk-crashed", tmp_path / "branch-crashed"
    # the trunk crashes before the fork (3), the branch after it (its retry resumes from its
    # own checkpoint: the seeded one at 3)
    faults = f"2#{trunk_id}:{trunk_crash};4#{branch_id}:{branch_crash}"
    monkeypatch.setenv("MIMSCALE_FAIL_AT", faults)
    assert main(["run", str(shared), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert trunk_crash.exists() and branch_crash.exists(), "a fault was not injected"
    assert "2 cells = 2 pre-training + 2 fine-tuning stages" in out
    assert "4 stages completed, 0 failed, 2 retries" in out
    monkeypatch.delenv("MIMSCALE_FAIL_AT")
    alone = _study(tmp_path, demo_dir, "alone", [4, 8], share_prefix=False)
    assert main(["run", str(alone), "--no-report"]) == 0
    capsys.readouterr()

    cells, curves, store = _tables(shared)
    ref_cells, ref_curves, ref_store = _tables(alone)
    # the same stages (ids do not depend on sharing), the same numbers to the last bit
    assert list(cells.pretrain_id) == list(ref_cells.pretrain_id)
    assert list(cells.cell_id) == list(ref_cells.cell_id)
    assert cells[COLUMNS].equals(ref_cells[COLUMNS]), (cells[COLUMNS], ref_cells[COLUMNS])
    keys = ["cell_id", "phase", "step", "split", "metric"]
    a, b = (c.sort_values(keys).reset_index(drop=True) for c in (curves, ref_curves))
    assert a[[*keys, "value", "lr"]].equals(b[[*keys, "value", "lr"]])
    for pid in cells.pretrain_id:
        mine, ref = _encoder(store, pid), _encoder(ref_store, pid)
        assert mine.keys() == ref.keys()
        assert all(torch.equal(mine[k], ref[k]) for k in mine), pid

    # the branch really started from the trunk: its prefix is the trunk's state at step 3,
    # written before the branch's own stage began
    stages = store.read_table("pretrain.parquet").to_pandas().set_index("iterations")
    branch, trunk = stages.loc[4], stages.loc[8]
    assert branch.trunk_id == trunk.stage_id and branch.fork_step == 3
    prefix = Path(store.path(f"stages/pretrain/{branch.stage_id}/prefix.pt"))
    started = Path(store.path(f"stages/pretrain/{branch.stage_id}/stage.toml"))
    seeded = torch.load(prefix, map_location="cpu", weights_only=False)
    assert seeded["step"] == 3 and len(seeded["window"]) == 1  # step 2 of the 2-step window
    assert prefix.stat().st_mtime_ns <= started.stat().st_mtime_ns
    assert not Path(ref_store.path(f"stages/pretrain/{branch.stage_id}/prefix.pt")).exists()


def test_a_finetune_change_reruns_only_finetuning(
    tmp_path: Path, demo_dir: Path, local_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _study(tmp_path, demo_dir, "tune", [4, 8])
    assert main(["run", str(path), "--no-report"]) == 0
    capsys.readouterr()
    store = ResultStore(load_study(path).output_dir)
    pre_files = sorted(Path(store.path("stages/pretrain")).rglob("*"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in pre_files if p.is_file()}

    assert main(["run", str(path), "--no-report", "--set", "finetune.layer_decay=0.7"]) == 0
    out = capsys.readouterr().out
    assert "2 pre-training + 2 fine-tuning stages, 2 complete, 2 to run" in out
    assert "grid: 2 stages completed, 0 failed" in out
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before}
    assert after == before, "a pre-training file was touched: pre-training ran again"
    assert len(store.stage_ids("finetune")) == 4 and len(store.stage_ids("pretrain")) == 2
    cells = store.read_table("cells.parquet").to_pandas()
    assert len(cells) == 2 and (cells.status == "complete").all()


def test_a_longer_length_continues_from_the_longest_prefix(
    tmp_path: Path, demo_dir: Path, local_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _study(tmp_path, demo_dir, "grow", [4, 8], finetune={"enabled": False})
    tables = tiny_tables(demo_dir, tmp_path / "grow", grid={"iterations": [4, 8]}, pretrain=SHARED)
    write_study(path, tables)
    assert main(["run", str(path), "--no-report"]) == 0
    grown = tiny_tables(
        demo_dir, tmp_path / "grow", grid={"iterations": [4, 8, 16]}, pretrain=SHARED
    )
    write_study(path, grown)
    assert main(["run", str(path), "--no-report"]) == 0
    capsys.readouterr()
    store = ResultStore(load_study(path).output_dir)
    stages = store.read_table("pretrain.parquet").to_pandas().set_index("iterations")
    # 16 is the new trunk; 8 (done) kept its prefix at step 6 (0.75 × 8), where 16 started
    longest = stages.loc[16]
    first = torch.load(
        Path(store.path(f"stages/pretrain/{stages.loc[8].stage_id}/prefix.pt")),
        map_location="cpu",
        weights_only=False,
    )
    assert first["step"] == 6

    alone = tiny_tables(
        demo_dir, tmp_path / "alone16", grid={"iterations": [16], "share_prefix": False},
        pretrain=SHARED,
    )  # fmt: skip
    alone_path = write_study(tmp_path / "alone16.toml", alone)
    assert main(["run", str(alone_path), "--no-report"]) == 0
    capsys.readouterr()
    ref = ResultStore(load_study(alone_path).output_dir).stage_row("pretrain", longest.stage_id)
    for key in ("train_loss", "val_loss"):
        assert longest[key] == ref[key], key


def test_finetune_targets_are_stages_and_a_new_one_runs_alone(
    tmp_path: Path, demo_dir: Path, local_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """[[finetune.targets]]: one row per (pre-training, target); adding a target to a
    finished study runs only its fine-tuning stage."""
    target = {"train": "demo-25pct", "val": "demo-val"}
    tables = tiny_tables(
        demo_dir, tmp_path / "targets", grid={"iterations": [4]}, pretrain=SHARED,
        finetune={**FINETUNE, "targets": [{"name": "quarter", **target}]},
    )  # fmt: skip
    path = write_study(tmp_path / "targets.toml", tables)
    assert main(["run", str(path), "--no-report"]) == 0
    capsys.readouterr()
    store = ResultStore(load_study(path).output_dir)
    pre = sorted(Path(store.path("stages/pretrain")).rglob("result.parquet"))
    before = {p: p.read_bytes() for p in pre}

    second = {
        "name": "half",
        "train": "demo-50pct",
        "val": "demo-val",
        "recipe": {"layer_decay": 0.6},
    }
    tables["finetune"]["targets"].append(second)
    write_study(path, tables)
    assert main(["run", str(path), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "2 cells = 1 pre-training + 2 fine-tuning stages, 2 complete, 1 to run" in out
    assert {p: p.read_bytes() for p in pre} == before
    cells = store.read_table("cells.parquet").to_pandas().set_index("target")
    assert sorted(cells.index) == ["half", "quarter"]
    assert cells.pretrain_id.nunique() == 1 and cells.finetune_id.nunique() == 2
    assert cells.val_loss.nunique() == 1  # one encoder, scored once
    assert (cells.status == "complete").all()
