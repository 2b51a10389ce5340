"""How fast ``mimscale status`` and ``mimscale plan`` answer, next to a baseline revision.

Targets (issue 9): ``status studies/quickstart.toml`` on a finished quickstart ≤ 1.0 s and
≤ 250 MB peak RSS on 2 cores; ``plan studies/paper.toml`` ≤ 2 s with its FLOP cache warm.

The finished quickstart is the real study's cells over the real demo manifests (built into a
temp dir), each complete in a store laid out as that revision lays it out (the flat layout's
``cells/<id>/``, or ``stages/<kind>/<id>/``), written through that revision's own store
(numbers are placeholders: status only reads them). Each command runs in a fresh
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


FILL = """
import sys
try:  # the stage layout
    from scaling.config.identity import cell_digests, study_subsets
    from scaling.config.load import load_study
    from scaling.study.stages import build_graph
    from scaling.study.store import ResultStore
    study = load_study(sys.argv[1], sys.argv[2:])
    store = ResultStore(study.output_dir)
    subsets = study_subsets(study)
    graph = build_graph([(c, cell_digests(c, subsets)) for c in study.cells()])
    for i, stage in enumerate(graph.stages()):
        row = {**stage.cell.row_fields(), "stage_id": stage.stage_id, "status": "complete",
               "val_loss": 0.5 + i / 100, "finetune_top1": 50.0}
        points = [{"phase": stage.kind, "step": s, "split": "val", "metric": "loss",
                   "value": 0.5, "lr": 1e-3} for s in range(0, 81, 10)]
        store.write_stage_result(stage.kind, row, points)
        store.write_json(f"{stage.dir}/progress.json", {"phase": "done"})
except ImportError:  # the flat layout (e80e4eb): one directory per cell
    from scaling.config import load_study
    from scaling.digests import manifest_digests
    from scaling.store import ResultStore
    study = load_study(sys.argv[1], sys.argv[2:])
    store = ResultStore(study.output_dir)
    for i, cell in enumerate(study.cells()):
        cid = cell.cell_id(manifest_digests(cell))
        row = {**cell.row_fields(), "cell_id": cid, "status": "complete",
               "val_loss": 0.5 + i / 100, "finetune_top1": 50.0}
        points = [{"cell_id": cid, "phase": "pretrain", "step": s, "split": "val",
                   "metric": "loss", "value": 0.5, "lr": 1e-3} for s in range(0, 81, 10)]
        store.write_cell_result(row, points)
        store.write_json(f"cells/{cid}/progress.json", {"phase": "done"})
"""


def finished_quickstart(work: Path, src: Path, name: str) -> tuple[Path, list[str]]:
    """The quickstart study on demo data in ``work``, with every cell complete in its store
    as revision ``src`` lays results out."""
    sys.path.insert(0, str(REPO))
    from subsets.demo import build_demo

    if not (work / "demo").exists():
        build_demo(work / "demo")
    study_file = work / "quickstart.toml"
    study_file.write_text((REPO / "studies" / "quickstart.toml").read_text())
    overrides = [f"data.root={work / 'demo'}", f"data.manifest_dir={work / 'demo' / 'manifests'}"]
    overrides.append(f"output_dir={work / name}")
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run(
        [sys.executable, "-c", FILL, str(study_file), *overrides],
        cwd=src, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"{src}: filling the store failed:\n{proc.stderr[-2000:]}")
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
        base = work / "baseline"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-f", str(base), args.baseline],
            cwd=REPO, check=True, capture_output=True,
        )  # fmt: skip
        env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
        try:
            rows = []
            for label, targets in (
                ("status quickstart (finished)", "≤ 1.0 s, ≤ 250 MB"),
                ("plan paper (FLOP cache warm)", "≤ 2.0 s"),
            ):
                figures = []
                for src, name in ((REPO, "now"), (base, "base")):
                    if label.startswith("status"):
                        study_file, overrides = finished_quickstart(work, src, name)
                        sets = [a for o in overrides for a in ("--set", o)]
                        argv = ["status", str(study_file), *sets]
                    else:
                        argv = ["plan", str(src / "studies" / "paper.toml")]
                    subprocess.run(
                        [sys.executable, "-m", "scaling", *argv],
                        cwd=src,
                        capture_output=True,
                        env={**env, "PYTHONPATH": str(src)},
                    )  # fmt: skip  (warms the FLOP cache of each revision)
                    figures.append(measure(src, argv, args.repeat, env))
                rows.append((label, figures[0], figures[1], targets))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO)
    print(f"{'command':<30} {'now s':>7} {'now MB':>7} {args.baseline + ' s':>12} "
          f"{args.baseline + ' MB':>13} {'speed-up':>9}  target")  # fmt: skip
    for label, (ws, rs), (wo, ro), targets in rows:
        print(f"{label:<30} {ws:7.2f} {rs:7.0f} {wo:12.2f} {ro:13.0f} {wo / ws:8.1f}×  {targets}")
    print(json.dumps({"rows": [[r[0], *r[1], *r[2]] for r in rows]}))


if __name__ == "__main__":
    main()
