"""Tiny studies for the config, plan and grid tests: TOML text in tmp_path, demo data once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table
        return (
            "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
        )
    return repr(v)


def study_text(tables: dict[str, Any]) -> str:
    """TOML of top-level keys then one ``[table]`` per dict value (one level deep)."""
    lines = [f"{k} = {toml_value(v)}" for k, v in tables.items() if not isinstance(v, dict)]
    for name, table in tables.items():
        if isinstance(table, dict):
            lines += ["", f"[{name}]"]
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def tiny_tables(data_dir: Path, out_dir: Path, **changes: dict[str, Any]) -> dict[str, Any]:
    """A study of swinv2-nano cells small enough for a few seconds each on one core."""
    tables: dict[str, Any] = {
        "name": "tiny",
        "output_dir": str(out_dir),
        "data": {
            "root": str(data_dir),
            "manifest_dir": str(data_dir / "manifests"),
            "val": "demo-val",
            "finetune_train": "demo-25pct",
            "finetune_val": "demo-val",
            "num_workers": 0,
        },
        "grid": {"models": ["swinv2-nano"], "data": ["demo-25pct"], "iterations": [8]},
        "pretrain": {
            "batch_size": 8,
            "base_lr": 0.01,
            "schedule": "cosine",
            "warmup_fraction": 0.25,
            "drop_path": 0.0,
            "image_size": 32,
            "mask_patch_size": 8,
            "val_interval": 4,
            "val_limit": 16,
            "checkpoint_interval": 2,
            "log_interval": 2,
            "amp": "fp32",
        },
        "finetune": {"enabled": False, "image_size": 32},
        "resources": {"cpus": 1, "max_failures": 2},
    }
    for name, values in changes.items():
        if isinstance(tables.get(name), dict):
            tables[name] = {**tables[name], **values}
        else:
            tables[name] = values
    return tables


def write_study(path: Path, tables: dict[str, Any]) -> Path:
    path.write_text(study_text(tables))
    return path


def line_of_key(path: Path, section: str, key: str) -> int:
    """1-based line of ``key = …`` inside ``[section]`` of a TOML file."""
    lines = path.read_text().splitlines()
    header = lines.index(f"[{section}]")
    return next(n for n, t in enumerate(lines, 1) if n > header and t.startswith(f"{key} = "))


def demo_data(root: Path) -> Path:
    """The embedded demo data set with its manifests (about a second to build)."""
    from subsets.demo import build_demo

    return build_demo(root)


def mimscale(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh process (its own Ray instance)."""
    return subprocess.run(
        [sys.executable, "-m", "scaling", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def run_every_stage(study_path: Path) -> tuple[Any, Any, Any]:
    """Load a study and run each of its stages in this process, in order (no Ray):
    (study, graph, store)."""
    from scaling.cell.run import run_stage
    from scaling.config.load import load_study
    from scaling.study.more_verbs import study_graph
    from scaling.study.store import ResultStore

    study = load_study(study_path)
    graph = study_graph(study)
    store = ResultStore(study.output_dir)
    for stage in graph.stages():
        job = stage.to_job()
        run_stage(job["kind"], job["stage_id"], stage.cell, store, pretrain_id=job["pretrain_id"])
    return study, graph, store
