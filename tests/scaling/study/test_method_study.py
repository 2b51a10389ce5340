"""A study with a method axis and diagnostics: config errors, the stage graph, plan, status,
and (slow) a real Ray run whose tables carry the method and the diagnostics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from study_helpers import mimscale, tiny_tables

from scaling.config.load import load_study
from scaling.config.parse import ConfigError
from scaling.study.plan import format_plan, plan_study
from scaling.study.stages import build_graph

MAE = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 4}
LOCALMIM = {"decoder_dim": 32, "decoder_heads": 4, "mask_patch_size": 8}


def _tables(data: Path, out: Path, **changes) -> dict:
    grid = {
        "models": ["vit-nano", "swinv2-nano"],
        "methods": ["simmim", "mae", "localmim"],
        "exclude": [{"method": "mae", "model": "swinv2-nano"}],
        "iterations": [4],
    }
    sections = {"grid": grid, "mae": MAE, "localmim": LOCALMIM,
                "diagnostics": {"enabled": True, "images": 8, "batch_size": 8}}  # fmt: skip
    return tiny_tables(data, out, **(sections | changes))


def _value(v: object) -> str:
    if isinstance(v, dict):  # an inline table (grid.exclude entries)
        return "{" + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return json.dumps(v)  # strings, numbers, booleans


def _section(name: str, table: dict) -> list[str]:
    lines = ["", f"[{name}]"]
    lines += [f"{k} = {_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for k, v in table.items():
        if isinstance(v, dict):
            lines += _section(f'{name}."{k}"', v)
    return lines


def write_study(path: Path, tables: dict) -> Path:
    """The study as TOML, with per-size sub-tables and inline-table lists."""
    lines = [f"{k} = {_value(v)}" for k, v in tables.items() if not isinstance(v, dict)]
    for name, table in tables.items():
        if isinstance(table, dict):
            lines += _section(name, table)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _load(tmp_path: Path, tables: dict):
    return load_study(write_study(tmp_path / "study.toml", tables))


def test_graph_has_a_diagnostics_stage_per_pretraining(tmp_path: Path, demo_dir: Path) -> None:
    from scaling.config.identity import manifest_digests

    study = _load(tmp_path, _tables(demo_dir, tmp_path / "out"))
    cells = study.cells()
    assert [(c.model, c.method) for c in cells] == [
        ("vit-nano", "simmim"), ("vit-nano", "mae"), ("vit-nano", "localmim"),
        ("swinv2-nano", "simmim"), ("swinv2-nano", "localmim"),
    ]  # fmt: skip
    graph = build_graph([(c, manifest_digests(c)) for c in cells])
    assert len(graph.pretrain) == 5 and len(graph.diagnostics) == 5
    for did, stage in graph.diagnostics.items():
        assert stage.role == "diagnose" and graph.diagnostics_of[stage.pretrain_id] == did
        assert stage.cell.resources.workers == 1 and stage.to_job()["kind"] == "diagnostics"
    assert {s.cell.method for s in graph.pretrain.values()} == {"simmim", "mae", "localmim"}
    # a different diagnostic set is another stage; the pre-training stays
    more = _load(tmp_path, _tables(demo_dir, tmp_path / "out", diagnostics={"enabled": True}))
    other = build_graph([(c, manifest_digests(c)) for c in more.cells()])
    assert set(other.pretrain) == set(graph.pretrain)
    assert not set(other.diagnostics) & set(graph.diagnostics)


def test_plan_shows_the_methods_and_the_diagnostics_cost(tmp_path: Path, demo_dir: Path) -> None:
    plan = plan_study(_load(tmp_path, _tables(demo_dir, tmp_path / "out")))
    text = format_plan(plan)
    assert "5 cells = 2 models × 3 methods" in text and "less 1 excluded" in text
    assert "vit-nano     localmim " in text  # the method column of a multi-method plan
    assert "diagnostics (a stage after each pre-training" in text
    rows = {(d.model, d.method): d for d in plan.diagnostics}
    assert set(rows) == {(c.model, c.method) for c in plan.cells}
    assert all(d.stages == 1 and d.images == 8 and d.forward_flops > 0 for d in rows.values())
    flops = {(c.model, c.method): c.pretrain_flops for c in plan.cells}
    assert 0 < flops["vit-nano", "mae"] < flops["vit-nano", "simmim"]
    assert json.loads(json.dumps(plan.to_json()))["diagnostics"][0]["images"] == 8


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        ({"grid": {"methods": ["simmim", "mea"]}}, "grid.methods[1]",
         r"unknown method 'mea'; valid: simmim, mae, localmim"),
        ({"grid": {"methods": ["simmim", "mae"]}}, "grid.methods[1]",
         r"mae needs a ViT encoder, got swinv2-nano; leave it out with \[\[grid.exclude\]\] "
         r'method = "mae", model = "swinv2-nano"'),
        ({"mae": {**MAE, "mask_ratio": 1.5}}, "mae.mask_ratio", r"must be in \(0, 1\), got 1.5"),
        ({"mae": {**MAE, "decoder_heads": 5}}, "mae.decoder_heads", "must divide decoder_dim 32"),
        ({"mae": {**MAE, "mask_ratio": 0.95}}, "mae.mask_ratio",
         r"0.95 keeps 0 of vit-nano's 16 tokens at 32 px.*\(grid.models\[0\] = 'vit-nano'\)"),
        ({"localmim": {**LOCALMIM, "mask_patch_size": 12}}, "localmim.mask_patch_size",
         "must divide image_size 32, got 12"),
        ({"localmim": {**LOCALMIM, "target": "sift"}}, "localmim.target",
         "must be one of pixel, hog"),
        ({"mae": {**MAE, "models": {"vit-huge": {"decoder_depth": 2}}}}, "mae.models.vit-huge",
         "unknown model 'vit-huge'"),
        ({"diagnostics": {"enabled": True, "images": 4, "batch_size": 8}},
         "diagnostics.batch_size", r"must be in 1 … images \(4\), got 8"),
    ],
)  # fmt: skip
def test_method_errors_are_located(
    tmp_path: Path, demo_dir: Path, change: dict, key: str, message: str
) -> None:
    tables = _tables(demo_dir, tmp_path / "out")
    for section, values in change.items():
        tables[section] = {**tables[section], **values}
    if change.get("grid", {}).get("methods") == ["simmim", "mae"]:
        tables["grid"].pop("exclude")
    path = write_study(tmp_path / "study.toml", tables)
    with pytest.raises(ConfigError, match=rf"study.toml.*{re.escape(key)}: {message}"):
        load_study(path)


def test_activation_checkpointing_is_simmim_only(tmp_path: Path, demo_dir: Path) -> None:
    tables = _tables(demo_dir, tmp_path / "out")
    tables["pretrain"] = {**tables["pretrain"], "activation_checkpointing": "block"}
    with pytest.raises(ConfigError, match=r"pretrain.activation_checkpointing: only simmim"):
        load_study(write_study(tmp_path / "study.toml", tables))


def test_simmim_only_studies_keep_their_default() -> None:
    study = load_study(Path(__file__).parents[3] / "studies" / "quickstart.toml")
    assert study.grid.methods == ("simmim",)
    assert {c.method for c in study.cells()} == {"simmim"}
    assert not study.diagnostics.enabled


@pytest.mark.slow
def test_a_method_study_runs_on_ray_with_diagnostics(tmp_path: Path, demo_dir: Path) -> None:
    tables = _tables(demo_dir, tmp_path / "out")
    tables["grid"] = {**tables["grid"], "models": ["vit-nano"], "methods": ["simmim", "mae"]}
    tables["grid"].pop("exclude")
    study = write_study(tmp_path / "study.toml", tables)
    done = mimscale("run", str(study), "--no-report", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    cells = pd.read_parquet(tmp_path / "out" / "cells.parquet")
    assert sorted(cells.method) == ["mae", "simmim"] and set(cells.status) == {"complete"}
    diag = pd.read_parquet(tmp_path / "out" / "diagnostics.parquet")
    assert set(diag.cell_id) == set(cells.cell_id) and set(diag.method) == {"mae", "simmim"}
    summary = diag[diag.layer == -1]
    assert len(summary) == 2 * summary.metric.nunique()
    status = mimscale("status", str(study))
    assert status.returncode == 0 and status.stdout.count("diagnostics ") >= 2
    assert "2 diagnostics stages: 2 done" in status.stdout
