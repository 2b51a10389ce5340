"""Run a study at two revisions of this repository and compare their results cell by cell.

Shows that a refactor changed nothing: the same cell ids, and bit-for-bit the same
``train_loss``, ``val_loss``, ``finetune_top1`` and ``finetune_top5`` (on the CPU, where
runs are deterministic). Each revision is checked out with ``git worktree`` (``WORKTREE``
means this checkout as it is, uncommitted changes included) and runs
``python -m scaling run STUDY`` with the same interpreter and the same demo data::

    python scripts/compare_revisions.py e80e4eb WORKTREE --study studies/quickstart.toml

Exit 0 when every cell matches, 1 otherwise (the differing cells are listed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("train_loss", "val_loss", "finetune_top1", "finetune_top5")


def checkout(rev: str, where: Path) -> Path:
    if rev == "WORKTREE":
        return REPO
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-f", str(where), rev],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    return where


def run(src: Path, study: Path, out: Path, demo: Path) -> dict[str, dict[str, float]]:
    sets = [
        f"output_dir={out}",
        f"data.root={demo}",
        f"data.manifest_dir={demo / 'manifests'}",
    ]
    cmd = [sys.executable, "-m", "scaling", "run", str(study), "--no-report"]
    cmd += [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(src), "MIMSCALE_DEVICE": "cpu"}
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{src}: run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    table = pq.read_table(out / "cells.parquet").to_pylist()
    return {r["cell_id"]: {c: r[c] for c in COLUMNS} for r in table}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="git revision (or WORKTREE)")
    parser.add_argument("new", help="git revision (or WORKTREE)")
    parser.add_argument("--study", type=Path, default=REPO / "studies" / "quickstart.toml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sys.path.insert(0, str(REPO))
        from subsets.demo import build_demo

        demo = build_demo(work / "demo")
        results, trees = [], []
        try:
            for i, rev in enumerate((args.old, args.new)):
                src = checkout(rev, work / f"rev{i}")
                trees.append(src)
                results.append(run(src, args.study.resolve(), work / f"out{i}", demo))
        finally:
            for src in trees:
                if src != REPO:
                    subprocess.run(["git", "worktree", "remove", "--force", str(src)], cwd=REPO)
    old, new = results
    bad = sorted(set(old) ^ set(new))
    for cid in sorted(set(old) & set(new)):
        same = all(old[cid][c] == new[cid][c] for c in COLUMNS)  # bit-for-bit, NaN aside
        print(
            f"{cid}  "
            + "  ".join(f"{c} {new[cid][c]!r}" for c in COLUMNS)
            + ("" if same else "  DIFFERS")
        )
        if not same:
            bad.append(cid)
    print(f"{len(set(old) & set(new))} cells in both, {len(bad)} differ or are missing: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
