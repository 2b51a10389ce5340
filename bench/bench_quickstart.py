"""Time the README's main job from scratch: ``mimscale run studies/quickstart.toml``.

Fresh demo data and a fresh output directory in a temp folder, the CLI in a subprocess
(so Ray's start-up and every import count), against the 180 s target of a 2-core
machine. The load average is printed beside the figure: on a shared machine the wall
time says as much about the neighbours as about mimscale.

    .venv/bin/python bench/bench_quickstart.py [--keep DIR] [--target 180]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STUDY = REPO / "studies" / "quickstart.toml"


def _session_cpu_s(sid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every live process in session ``sid``, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state (field 3); session is field 6, utime/stime fields 14/15
        if int(fields[3]) == sid:
            out[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def run_counting_cpu(cmd: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``cmd`` in its own session; sum the CPU time of every process of that session
    (the CLI, Ray's daemons, the trial workers), sampled twice a second."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen: dict[int, float] = {}
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.communicate()), daemon=True)
    reader.start()
    while reader.is_alive():
        for pid, cpu in _session_cpu_s(proc.pid).items():
            seen[pid] = max(cpu, seen.get(pid, 0.0))
        reader.join(timeout=0.5)
    with contextlib.suppress(ProcessLookupError):  # Ray helpers outliving the driver
        os.killpg(proc.pid, signal.SIGTERM)
    done = subprocess.CompletedProcess(cmd, proc.returncode, *(out or ["", ""]))
    return done, sum(seen.values())


def findings(fits_path: Path) -> str:
    """The two findings the quickstart is meant to show, from its report's fits.json."""
    import json

    try:
        fits = json.loads(fits_path.read_text())
        overall = fits["correlation"]["overall"]
        pairs = fits["overfitting"]["by_model_data"]
    except (OSError, ValueError, KeyError) as err:
        return f"unreadable ({err})"
    overfit = [f"{r['model']} × {r['data']}" for r in pairs if r["overfits"]]
    return (
        f"val loss ↔ top-1 Pearson {overall['pearson']['r']:+.3f}, "
        f"Spearman {overall['spearman']['r']:+.3f} (n={overall['n']}); "
        f"overfitting in {len(overfit)} of {len(pairs)} pairs ({', '.join(overfit) or 'none'})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=180.0, help="seconds (default 180)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-quickstart-"))
    demo, out = work / "demo", work / "out"
    if out.exists() or demo.exists():
        sys.exit(f"{work} already holds a run; pick an empty folder")
    cmd = [
        sys.executable,
        "-m",
        "scaling",
        "run",
        str(STUDY),
        "--set",
        f"output_dir={str(out)!r}",
        "--set",
        f"data.root={str(demo)!r}",
        "--set",
        f"data.manifest_dir={str(demo / 'manifests')!r}",
        "--progress-interval",
        "30",
    ]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc, cpu_s = run_counting_cpu(cmd)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()

    done = total = 0
    if (out / "cells.parquet").exists():
        import pyarrow.parquet as pq

        cells = pq.read_table(out / "cells.parquet", columns=["status"]).column(0).to_pylist()
        total, done = len(cells), cells.count("complete")
    report = out / "report" / "report.html"
    grid_line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("grid:")), "")
    print(f"mimscale run studies/quickstart.toml (fresh data and output in {work})")
    print(f"  exit code      {proc.returncode}")
    print(
        f"  wall           {wall:.1f} s  (target {args.target:.0f} s: "
        f"{'met' if wall <= args.target else 'MISSED'})"
    )
    print(f"  cells          {done}/{total} complete")
    print(f"  {grid_line}")
    print(f"  report         {'written' if report.exists() else 'missing'}")
    print(f"  findings       {findings(out / 'report' / 'fits.json')}")
    print(f"  cpus           {os.cpu_count()}")
    print(
        f"  cpu time       {cpu_s:.0f} s of all its processes → {cpu_s / os.cpu_count():.0f} s "
        "if the cores were all ours"
    )
    print(f"  load average   {load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min)")
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if proc.returncode == 0 and done == total > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
