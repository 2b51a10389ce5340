"""How fast ``mimscale status`` and ``mimscale plan`` answer, next to a baseline revision.

Targets (issue 9): ``status studies/quickstart.toml`` on a finished quickstart ≤ 1.0 s and
≤ 250 MB peak RSS on 2 cores; ``plan studies/paper.toml`` ≤ 2 s with its FLOP cache warm.

The finished quickstart is the real study's cells over the real demo manifests (built into a
temp dir), each with a complete row and curves written through the store, as a finished run
leaves them (numbers are placeholders: status only reads them). Each command runs in a fresh
process (``python -m scaling …``); wall time is the median of ``--repeat`` runs measured by
this script, peak RSS the child's own ``ru_maxrss``. The baseline is another revision of this
repository (default e80e4eb, the flat layout) checked out with ``git worktree`` and run with
the same interpreter::

    python bench/bench_cli_startup.py [--baseline e80e4eb] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WRAP = (
    "import resource, sys; from scaling.cli import main\n"
    "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
    "sys.stdout.flush()\n"
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(rc or 0)\n"
)


def finished_quickstart(work: Path) -> tuple[Path, list[str]]:
    """The quickstart study on demo data in ``work``, with every cell complete in its store."""
    sys.path.insert(0, str(REPO))
    from scaling.config.identity import cell_id, manifest_digests
    from scaling.config.load import load_study
    from scaling.study.store import ResultStore
    from subsets.demo import build_demo

    build_demo(work / "demo")
    text = (REPO / "studies" / "quickstart.toml").read_text()
    study_file = work / "quickstart.toml"
    study_file.write_text(text)
    overrides = [f"data.root={work / 'demo'}", f"data.manifest_dir={work / 'demo' / 'manifests'}"]
    overrides.append(f"output_dir={work / 'out'}")
    study = load_study(study_file, overrides)
    store = ResultStore(study.output_dir)
    for i, cell in enumerate(study.cells()):
        cid = cell_id(cell, manifest_digests(cell))
        row = {**cell.row_fields(), "cell_id": cid, "status": "complete", "val_loss": 0.5 + i / 100}
        row |= {"train_loss": 0.4, "finetune_top1": 50.0 + i, "finetune_top5": 90.0}
        points = [
            {"cell_id": cid, "phase": "pretrain", "step": s, "split": "val", "metric": "loss",
             "value": 0.5, "lr": 1e-3}
            for s in range(0, cell.iterations + 1, 10)
        ]  # fmt: skip
        store.write_cell_result(row, points)
        store.write_json(f"cells/{cid}/progress.json", {"phase": "done", "step": cell.iterations})
    return study_file, overrides


def measure(src: Path, argv: list[str], repeat: int, env: dict[str, str]) -> tuple[float, float]:
    """(median wall s, max peak RSS MB) of ``argv`` run with ``src`` first on the path."""
    walls, rss = [], []
    env = {**env, "PYTHONPATH": str(src)}
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", WRAP, *argv], capture_output=True, text=True, cwd=src, env=env
        )
        walls.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{src}: {' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
        kb = [ln for ln in proc.stderr.splitlines() if ln.startswith("MAXRSS_KB")][-1]
        rss.append(int(kb.split()[1]) / 1024)
    return statistics.median(walls), max(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="e80e4eb", help="git revision to compare with")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        study_file, overrides = finished_quickstart(work)
        base = work / "baseline"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-f", str(base), args.baseline],
            cwd=REPO, check=True, capture_output=True,
        )  # fmt: skip
        env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
        sets = [a for o in overrides for a in ("--set", o)]
        paper = ["plan", str(REPO / "studies" / "paper.toml")]
        status = ["status", str(study_file), *sets]
        try:
            rows = []
            for label, argv, targets in (
                ("status quickstart (finished)", status, "≤ 1.0 s, ≤ 250 MB"),
                ("plan paper (FLOP cache warm)", paper, "≤ 2.0 s"),
            ):
                for src in (REPO, base):
                    subprocess.run(
                        [sys.executable, "-m", "scaling", *argv],
                        cwd=src,
                        capture_output=True,
                        env={**env, "PYTHONPATH": str(src)},
                    )  # fmt: skip  (warms the FLOP cache of each revision)
                new = measure(REPO, argv, args.repeat, env)
                old = measure(base, argv, args.repeat, env)
                rows.append((label, new, old, targets))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO)
    print(f"{'command':<30} {'now s':>7} {'now MB':>7} {args.baseline + ' s':>12} "
          f"{args.baseline + ' MB':>13} {'speed-up':>9}  target")  # fmt: skip
    for label, (ws, rs), (wo, ro), targets in rows:
        print(f"{label:<30} {ws:7.2f} {rs:7.0f} {wo:12.2f} {ro:13.0f} {wo / ws:8.1f}×  {targets}")
    print(json.dumps({"rows": [[r[0], *r[1], *r[2]] for r in rows]}))


if __name__ == "__main__":
    main()
