"""``mimscale run`` on malformed studies: exit 2, a located message, no Ray, nothing written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from study_helpers import REPO, line_of_key, tiny_tables, write_study

from scaling.cli import main
from scaling.config.identity import pretrain_id, pretrain_identity, stage_key
from scaling.config.load import load_study
from scaling.study.store import ResultStore

# Runs every study in one fresh interpreter (so "ray was never imported" means something)
# and reports each exit code and stderr.
RUNNER = """
import contextlib, io, json, sys
from scaling.cli import main
out = []
for study in sys.argv[1:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["run", study])
    out.append({"rc": rc, "stderr": err.getvalue()})
print(json.dumps({"results": out, "ray_imported": "ray" in sys.modules}))
"""


@pytest.fixture
def data(demo_dir: Path) -> Path:
    return demo_dir  # the session's demo data set (conftest.py)


def case(section: str, key: str, value: Any) -> dict[str, Any]:
    return {section: {key: value}}


# multistep at 8 iterations: warm-up and first milestone both round to step 1 (valid);
# at 100 iterations the milestone (step 10) comes before the end of the warm-up (12 steps)
MILESTONE_IN_WARMUP = {"schedule": "multistep", "warmup_fraction": 0.12, "milestones": [0.1]}

# (name, changes, section and key whose line the message points at, message regex)
CASES = [
    (
        "unknown_key",
        case("pretrain", "mask_rato", 0.5),
        ("pretrain", "mask_rato"),
        r"pretrain\.mask_rato: unknown key \(did you mean 'mask_ratio'\?\); valid keys: ",
    ),
    (
        "wrong_type",
        case("grid", "iterations", ["many"]),
        ("grid", "iterations"),
        r"grid\.iterations\[0\]: expected int, got 'many'",
    ),
    (
        "empty_grid",
        case("grid", "data", []),
        ("grid", "data"),
        r"grid\.data: is missing or empty: give grid\.models, grid\.data and grid\.iterations",
    ),
    (
        "unknown_size",
        case("grid", "models", ["swinv2-nano", "swinv2-xxl"]),
        ("grid", "models"),
        r"grid\.models\[1\]: unknown model 'swinv2-xxl'; valid: swinv2-nano, ",
    ),
    (
        "missing_manifest",
        case("data", "val", "in1k-val"),
        ("data", "val"),
        r"data\.val: missing manifest in1k-val in \S+/manifests; build them with `mimscale "
        r"subsets build`",
    ),
    (
        "fraction_typo",
        case("grid", "data", ["demo-25pcts"]),
        ("grid", "data"),
        r"grid\.data\[0\]: missing manifest demo-25pcts in \S+ \(did you mean 'demo-25pct'\?\)",
    ),
    (
        "several_missing",
        {"grid": {"data": ["demo-25pct", "in1k-10pct"]}, "data": {"val": "in1k-val"}},
        ("grid", "data"),
        r"grid\.data\[1\]: missing manifests in \S+: in1k-10pct \[grid\.data\[1\]\], "
        r"in1k-val \[data\.val\]",
    ),
    (
        "milestone_in_warmup",
        {"grid": {"iterations": [8, 100]}, "pretrain": MILESTONE_IN_WARMUP},
        ("pretrain", "milestones"),
        r"pretrain\.milestones: the first milestone \(step 10\) falls inside the warm-up "
        r"\(12 steps\) for grid\.iterations\[1\] = 100$",
    ),
    (
        "finetune_warmup",
        {"finetune": {"enabled": True, "warmup_fraction": 1.0}},
        ("finetune", "warmup_fraction"),
        r"finetune\.warmup_fraction: must be in \[0, 1\), got 1\.0$",
    ),
]


def test_malformed_studies_exit_2_with_located_messages_and_no_side_effects(
    tmp_path: Path, data: Path
) -> None:
    paths, outs = [], []
    for name, changes, _, _ in CASES:
        out = tmp_path / "out" / name
        paths.append(write_study(tmp_path / f"{name}.toml", tiny_tables(data, out, **changes)))
        outs.append(out)
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["ray_imported"], "a malformed study must not start Ray"
    for (name, _, (section, key), message), path, out, result in zip(
        CASES, paths, outs, report["results"], strict=True
    ):
        stderr = result["stderr"].strip()
        assert result["rc"] == 2, (name, stderr)
        line = line_of_key(path, section, key)
        assert stderr.startswith(f"error: {path}:{line}: "), (name, stderr)
        assert re.search(message, stderr), (name, stderr)
        assert not out.exists(), f"{name}: wrote {out}"
    assert not (tmp_path / "out").exists()


def test_plan_rejects_a_schedule_that_does_not_fit_one_grid_length(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    tables = tiny_tables(tmp_path / "data", out, pretrain=MILESTONE_IN_WARMUP)
    path = write_study(tmp_path / "bad.toml", tables)
    assert main(["plan", str(path)]) == 0  # 8 iterations alone: valid
    capsys.readouterr()
    tables["grid"]["iterations"] = [8, 100]
    write_study(path, tables)
    assert main(["plan", str(path)]) == 2
    captured = capsys.readouterr()
    line = line_of_key(path, "pretrain", "milestones")
    assert captured.err == (
        f"error: {path}:{line}: pretrain.milestones: the first milestone (step 10) falls inside "
        "the warm-up (12 steps) for grid.iterations[1] = 100\n"
    )
    assert captured.out == ""
    assert not out.exists()


def test_trial_rejects_a_cell_whose_schedule_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scaling.config.load import dump_toml
    from scaling.config.parse import to_dict

    tables = tiny_tables(tmp_path / "data", tmp_path / "study")
    cell = to_dict(load_study(write_study(tmp_path / "s.toml", tables)).cells()[0])
    cell["pretrain"].update(MILESTONE_IN_WARMUP, warmup_fraction=0.5)
    path = tmp_path / "cell.toml"
    path.write_text(dump_toml(cell))
    out = tmp_path / "out"
    assert main(["trial", str(path), "-o", str(out)]) == 2
    line = line_of_key(path, "pretrain", "milestones")
    assert capsys.readouterr().err == (
        f"error: {path}:{line}: pretrain.milestones: the first milestone (step 1) falls inside "
        "the warm-up (4 steps) for iterations = 8\n"
    )
    assert not out.exists()


def test_changed_manifest_refuses_its_started_stages(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_study(tmp_path / "s.toml", tiny_tables(data, tmp_path / "out"))
    study = load_study(path)
    cell = study.cells()[0]
    # a stage that started on other manifests (e.g. before a rebuild with another seed)
    old_digests = {name: "0" * 32 for name in cell.subsets()}
    identity = pretrain_identity(cell, old_digests)
    old_id = pretrain_id(cell, old_digests)
    store = ResultStore(study.output_dir)
    record = {"stage_id": old_id, "kind": "pretrain", "key": stage_key(identity)}
    store.write_json(f"stages/pretrain/{old_id}/stage.json", record | {"identity": identity})
    store.write_json(f"stages/pretrain/{old_id}/progress.json", {"phase": "pretrain", "step": 4})
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*"))

    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(
        rf"error: {re.escape(str(path))}:\d+: data\.manifest_dir: refusing stages whose "
        rf"manifests changed since they started .*\n  pretrain stage {old_id} \(swinv2-nano, "
        r"demo-25pct, 8 iterations\) started with other manifests: demo-25pct 000000000000 → "
        r"[0-9a-f]{12}",
        err,
    ), err
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*")) == before

    # a stage dir with only its record (never started) is no conflict
    store.delete(f"stages/pretrain/{old_id}/progress.json")
    from scaling.study.preflight import prepare_run

    run = prepare_run(study, store)
    assert run.todo == (pretrain_id(cell, _digests(study)),)


def test_results_of_the_cell_layout_are_refused(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An output_dir of an earlier mimscale (cells/<id>/, format 2) is not mixed in."""
    path = write_study(tmp_path / "s.toml", tiny_tables(data, tmp_path / "out"))
    store = ResultStore(load_study(path).output_dir)
    store.write_json("cells/0123456789abcdef/cell.json", {"cell_id": "0123456789abcdef"})
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*"))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(
        rf"error: {re.escape(str(path))}:\d+: output_dir: .* holds results of an earlier "
        r"mimscale layout \(one directory per cell under cells/, cell format 2\); .* Write to "
        r"a new output_dir",
        err,
    ), err
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*")) == before


def _digests(study: Any) -> dict[str, str]:
    from scaling.config.identity import manifest_digests

    return manifest_digests(study.cells()[0])


def test_a_subset_smaller_than_a_batch_is_refused_before_ray(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """demo-1pct holds 17 images: a global batch of 32 cannot be drawn from it."""
    tables = tiny_tables(
        data, tmp_path / "out", grid={"data": ["demo-1pct"]}, pretrain={"batch_size": 32}
    )
    path = write_study(tmp_path / "s.toml", tables)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    line = line_of_key(path, "grid", "data")
    assert err.startswith(
        f"error: {path}:{line}: grid.data[0]: demo-1pct has 17 images, fewer than one global "
        "batch (pretrain.batch_size = 32 for swinv2-nano)"
    ), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "damage",
    ["not a pack", "damaged index", "edited index", "manifest not packed", "pixels for gpu"],
)
def test_a_pack_that_cannot_serve_the_study_is_refused_before_ray(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    from subsets.pack import PackConfig, pack_manifests

    pack = tmp_path / "pack"
    packed = ("demo-val",) if damage == "manifest not packed" else ("demo-25pct", "demo-val")
    manifests = tuple(data / "manifests" / f"{n}.parquet" for n in packed)
    pixels = damage == "pixels for gpu"
    pack_manifests(PackConfig(manifests=manifests, root=data, out_dir=pack, pixels=pixels))
    if damage == "not a pack":
        (pack / "index.parquet").unlink()
    elif damage == "damaged index":
        index = pack / "index.parquet"
        index.write_bytes(index.read_bytes()[:-100])  # truncated: no footer
    elif damage == "edited index":  # valid Parquet, one size changed, metadata kept
        import pyarrow as pa
        import pyarrow.parquet as pq

        index = pq.read_table(pack / "index.parquet")
        sizes = index.column("size").to_numpy().copy()
        sizes[0] += 1
        index = index.set_column(index.schema.get_field_index("size"), "size", pa.array(sizes))
        pq.write_table(index, pack / "index.parquet")
    decode = {"decode": "gpu"} if pixels else {}
    tables = tiny_tables(data, tmp_path / "out", data={"packed": str(pack)}, pretrain=decode)
    path = write_study(tmp_path / "s.toml", tables)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    message = {
        "not a pack": r"no index\.parquet \(not a pack\?\)",
        "damaged index": r"unreadable index\.parquet: ",
        "edited index": r"index\.parquet: digest [0-9a-f]{32}, its metadata says [0-9a-f]{32} "
        r"\(the index was changed\)",
        "manifest not packed": r"demo-25pct: \d+ of its \d+ images are not in the pack",
        "pixels for gpu": r"holds decoded pixels \(subsets pack --pixels\): decode = \"gpu\" has "
        r"no JPEG to decode in it; use decode = \"fast\" or \"exact\" with it",
    }[damage]
    line = line_of_key(path, "data", "packed")
    assert re.match(rf"error: {re.escape(str(path))}:{line}: data\.packed: .*{message}", err), err
    assert not (tmp_path / "out").exists()
