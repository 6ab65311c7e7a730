"""Benchmark: what the whole pipeline costs end to end, per grid size, cold and fully cached, in one run.

For each grid it runs ``python flows/train_flow.py ...`` as a subprocess (interpreter start and imports
included) in a fresh temporary artifacts folder, then the same command again (every stage cached):

- ``default``, 3 cells: the default solvers (``dopri5 rk4 tsit5``), model ``node``, device ``cpu``;
- ``all-solvers``, 18 cells: every solver of ``nodecore.solvers.SOLVER_NAMES`` (nine) x ``--models node anode``,
  device ``cpu``;
- ``seeds-64``, 64 cells: the first eight solvers x ``node anode`` x ``--seeds 0 1 2 3``, ``--devices cpu`` on any
  host (the seed axis gives a CPU-only host a 64-cell grid);
- ``all-solvers-4-devices``, 72 cells (``--grid72 DEV DEV DEV DEV``): every solver x ``node anode`` x four devices.

    python bench/pipeline_bench.py                          # 3, 18 and 64 cells, 5 epochs, the threads executor
    python bench/pipeline_bench.py --grids default seeds-64  # only these grids
    python bench/pipeline_bench.py --executors threads processes   # both executors, side by side
    python bench/pipeline_bench.py --executors threads threads-inline --epochs 200   # stage workers or not
    python bench/pipeline_bench.py --epochs 20 --json artifacts/pipeline_bench.json
    python bench/pipeline_bench.py --grid72 cuda:0 cuda:1 cuda:2 cuda:3

This checkout's local Prefect server is started (or reused) once with ``flows.server.ensure_server``
before anything is timed, so server start-up is not in any figure; every run goes to that server.

Figures: cold wall time; summed ``train_seconds`` of the cold run's ``summary.json`` rows; the ratio
wall / (summed training / cores), i.e. how many times longer the run took than its trainings would
perfectly spread over the cores; the cached rerun's wall time (the median of ``--cached-repeats`` reruns); the
per-cell increment between consecutive grids ((t18 - t3) / 15, (t64 - t18) / 46 ...), cold and cached; and, for
context, ``import flows.train_flow`` alone (median of ``--import-repeats`` fresh interpreters).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from flows.server import ensure_server  # noqa: E402
from nodecore.solvers import SOLVER_NAMES  # noqa: E402

INLINE = "threads-inline"
EVERY_SOLVER = ["--solvers", *SOLVER_NAMES, "--models", "node", "anode"]
GRIDS: dict[str, list[str]] = {  # label -> the grid's options, smallest first
    "default": [],
    "all-solvers": EVERY_SOLVER,
    "seeds-64": ["--solvers", *SOLVER_NAMES[:8], "--models", "node", "anode", "--seeds", "0", "1", "2", "3",
                 "--devices", "cpu"],
}


@dataclass
class GridResult:
    label: str
    executor: str
    cells: int
    cold_seconds: float
    train_seconds_sum: float
    wall_over_ideal: float
    cached_seconds: float  # the median of the cached reruns
    cached_cells: int  # cells the last rerun took whole from the cache
    cached_runs: list[float]


def _timed(command: list[str], *, env: dict[str, str]) -> float:
    """Run ``command`` in the repo root; return its wall seconds. Raises with its output tail on failure."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{tail}")
    return seconds


def run_grid(label: str, grid_args: list[str], *, executor: str, epochs: int, cores: int, env: dict[str, str],
             keep: bool, cached_repeats: int = 1) -> GridResult:
    """Cold run then ``cached_repeats`` cached reruns of one grid in a fresh artifacts folder."""
    folder = Path(tempfile.mkdtemp(prefix=f"pipeline_bench_{label}_{executor}_"))
    # "threads-inline": the threads executor without stage worker processes (everything in the flow's threads).
    run_args = ["--run.executor", "threads", "--run.stage_processes", "0"] if executor == INLINE else \
        ["--run.executor", executor]
    command = [sys.executable, "flows/train_flow.py", "--training.epochs", str(epochs), *run_args,
               "--run.artifacts_dir", str(folder), *grid_args]
    try:
        cold = _timed(command, env=env)
        rows = json.loads((folder / "summary.json").read_text())["rows"]  # the cold run's: read before the rerun
        cached = [_timed(command, env=env) for _ in range(cached_repeats)]
        rerun_rows = json.loads((folder / "summary.json").read_text())["rows"]
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    train = sum(row["train_seconds"] for row in rows)
    return GridResult(label=label, executor=executor, cells=len(rows), cold_seconds=cold, train_seconds_sum=train,
                      wall_over_ideal=cold / (train / cores) if train else float("nan"),
                      cached_seconds=statistics.median(cached), cached_runs=cached,
                      cached_cells=sum(row["cached"] == "all" for row in rerun_rows))


def import_seconds(repeats: int, env: dict[str, str]) -> float:
    """Median wall seconds of a fresh interpreter running ``import flows.train_flow``."""
    return statistics.median(_timed([sys.executable, "-c", "import flows.train_flow"], env=env)
                             for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5,
                        help=("--training.epochs of every run (default 5: the 3+18+64-cell benchmark fits in ~10 min "
                              "on 2 cores per executor)"))
    parser.add_argument("--grids", nargs="+", choices=list(GRIDS), default=list(GRIDS),
                        help="the grids to run, in this order (default: all three: 3, 18 and 64 cells)")
    parser.add_argument("--grid72", nargs=4, metavar="DEVICE", default=None,
                        help="also run the 72-cell grid: every solver x node anode x these four devices")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)),
                        help="cores in wall / (summed training / cores) (default: this process's usable CPUs)")
    parser.add_argument("--import-repeats", type=int, default=3, help="fresh interpreters timed for the import figure")
    parser.add_argument("--cached-repeats", type=int, default=1,
                        help="cached reruns of each grid, one after another; the table shows their median (default 1)")
    parser.add_argument("--executors", nargs="+", default=["threads"],
                        choices=["threads", INLINE, "processes", "dask"],
                        help=(f"--run.executor of the runs; each grid runs once per executor (default: threads); "
                              f"{INLINE} is threads with --run.stage_processes 0"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary artifacts folders")
    parser.add_argument("--json", default=None, help="also write the results as JSON to this path")
    args = parser.parse_args()

    server = ensure_server()  # before any timing: server start-up is not counted; children inherit its URL
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    grids: list[tuple[str, list[str]]] = [(label, GRIDS[label]) for label in args.grids]
    if args.grid72:
        grids.append(("all-solvers-4-devices", [*EVERY_SOLVER, "--devices", *args.grid72]))

    load_before = os.getloadavg()
    imports = import_seconds(args.import_repeats, env)
    results = [run_grid(label, grid_args, executor=executor, epochs=args.epochs, cores=args.cores, env=env,
                        keep=args.keep, cached_repeats=args.cached_repeats)
               for executor in args.executors for label, grid_args in grids]
    load_after = os.getloadavg()

    increments = []
    for small, large in zip(results, results[1:]):
        if small.executor != large.executor:
            continue
        extra = large.cells - small.cells
        increments.append({"executor": small.executor, "from": small.cells, "to": large.cells,
                           "cold_seconds_per_cell": (large.cold_seconds - small.cold_seconds) / extra,
                           "cached_seconds_per_cell": (large.cached_seconds - small.cached_seconds) / extra})

    print(f"pipeline end to end, {args.epochs} epochs, {args.cores} cores, server {server.api_url} "
          f"(already up: start-up not counted); load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"import flows.train_flow alone: {imports:.2f} s (median of {args.import_repeats})\n")
    print("| grid | executor | cells | cold wall s | summed train s | wall / (train / cores) "
          f"| goal 1.3 x train / cores + 5 s | cached wall s (median of {args.cached_repeats}) | cached cells |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        goal = 1.3 * r.train_seconds_sum / args.cores + 5
        print(f"| {r.label} | {r.executor} | {r.cells} | {r.cold_seconds:.1f} | {r.train_seconds_sum:.1f} | {r.wall_over_ideal:.2f} "
              f"| {goal:.1f} ({'met' if r.cold_seconds <= goal else 'missed'}) | {r.cached_seconds:.1f} "
              f"| {r.cached_cells}/{r.cells} |")
    print()
    for inc in increments:
        print(f"{inc['executor']}: per-cell increment {inc['from']} -> {inc['to']} cells: cold {inc['cold_seconds_per_cell']:.2f} s, "
              f"cached {inc['cached_seconds_per_cell']:.2f} s")
    for r in results:
        print(f"{r.label} ({r.executor}): cached / cold {r.cached_seconds / r.cold_seconds:.3f}; "
              f"import / cached {imports / r.cached_seconds:.3f}")
    report = {"epochs": args.epochs, "cores": args.cores, "import_seconds": imports,
              "load_average_before": load_before, "load_average_after": load_after,
              "grids": [asdict(r) for r in results], "increments": increments}
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
