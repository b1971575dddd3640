"""The whole asset graph (`full_pipeline`) on the synthetic source at ml-25m shape, scaled to N ratings: wall time,
peak memory and rows/s of every step, and how they grow with N.

Each N runs in a fresh DAGSTER_HOME and RECSYS_HOME through `recsys_dagster.bench.pipeline_run`, whose steps run in
their own processes one at a time (the multiprocess executor, `max_concurrent: 1`). This process samples the run's
process tree every 0.2 s: a step's peak RSS is its VmHWM (the kernel's high-water mark of that process, reset by
exec, so it catches peaks between samples), the graph's peak is the largest sampled sum over the tree (run process +
step). Steps are matched to processes by the pid the event log records at step start.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from recsys_core.bench.report import write_report

SAMPLE_SECONDS = 0.2
GOAL_RATINGS = 25_000_000
GOAL_WALL_MINUTES = 60.0
GOAL_PEAK_GB = 12.0
ROW_KEYS = ("rows", "dagster/row_count", "n_items")
GB = 2**30
# what `trained_model` reports about its cost caps (`recsys_core.training.TrainCost`)
TRAINING_KEYS = ("epochs_run", "epoch_users", "examples_per_s", "epoch_cap_bit", "budget_bit", "planned_epochs")
# what `offline_metrics` reports about its user sample and the baselines' fit sample
EVALUATION_KEYS = ("test_users", "test_users_total", "baselines_fit_ratings", "baselines_fit_seconds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ratings", default="1000000,5000000,25000000",
                        help="comma-separated sizes N (empty with --merge: only re-plot the merged reports)")
    parser.add_argument("--shape", default="ml-25m", help="MovieLens release whose users/items proportions to keep")
    parser.add_argument("--json", help="write the report here (the plot goes beside it as .png)")
    parser.add_argument("--plot", help="PNG of time and memory against N (default: the JSON path with .png)")
    parser.add_argument("--work-dir", help="keep each run's DAGSTER_HOME and RECSYS_HOME here (default: a temp dir)")
    parser.add_argument("--timeout-minutes", type=float, default=90.0, help="stop a run after this long, report its finished steps")
    parser.add_argument("--merge", action="append", default=[], help="an earlier report of this bench (JSON) whose sizes "
                        "join the table, plot and goals (a size run now replaces the merged one); repeatable")  # fmt: skip


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


class TreeSampler:
    """Per pid the highest VmHWM seen; for the tree the highest sum of VmRSS; the load average along the way."""

    def __init__(self, root: int) -> None:
        self.root = psutil.Process(root)
        self.hwm_kb: dict[int, int] = {}
        self.tree_peak_kb = 0
        self.load: list[float] = []

    def sample(self) -> None:
        try:
            pids = [self.root.pid, *(child.pid for child in self.root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return
        total = 0
        for pid in pids:
            self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), _status_kb(pid, "VmHWM:"))
            total += _status_kb(pid, "VmRSS:")
        self.tree_peak_kb = max(self.tree_peak_kb, total)
        self.load.append(os.getloadavg()[0])


def inherit_autogroup(pid: int) -> None:
    """Gives `pid`'s new session this process's autogroup nice value. Linux schedules each session as one group, so a
    graph started with `start_new_session` would otherwise drop the `echo -20 > /proc/self/autogroup` that a
    benchmark on a shared machine was started with. Best effort: no autogroup file (not Linux, or
    CONFIG_SCHED_AUTOGROUP off) or no right to raise priority leaves the child as it is."""
    try:
        nice = Path("/proc/self/autogroup").read_text().split("nice")[1].strip()
        Path(f"/proc/{pid}/autogroup").write_text(nice)
    except (OSError, IndexError):
        return


def _run_graph(n: int, shape: str, work: Path, timeout_s: float) -> dict[str, Any]:
    """One N: the run in a child process group, sampled until it ends or times out; then its event log as JSON."""
    env = {**os.environ, "DAGSTER_HOME": str(work / "dagster_home"), "RECSYS_HOME": str(work / "recsys_home"),
           "RECSYS_SYNTHETIC_RATINGS": str(n), "RECSYS_SYNTHETIC_SHAPE": shape, "RECSYS_EXECUTOR": "multiprocess",
           "RECSYS_DEPLOYMENT": "local"}  # fmt: skip
    for folder in ("dagster_home", "recsys_home"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    module = "recsys_dagster.bench.pipeline_run"
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", module, "run"], env=env, start_new_session=True)
    inherit_autogroup(child.pid)
    sampler = TreeSampler(child.pid)
    timed_out = False
    while child.poll() is None:
        sampler.sample()
        if time.perf_counter() - started > timeout_s:
            timed_out = True
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
            break
        time.sleep(SAMPLE_SECONDS)
    wall = time.perf_counter() - started
    log = work / "steps.json"
    subprocess.run([sys.executable, "-m", module, "read", str(log)], env=env, check=True)
    return {"n": n, "wall_s": wall, "returncode": child.returncode, "timed_out": timed_out, "sampler": sampler,
            "log": json.loads(log.read_text())}  # fmt: skip


def _rows(metadata: dict[str, Any]) -> int | None:
    return next((int(metadata[key]) for key in ROW_KEYS if key in metadata), None)


def step_rows(n: int, log: dict[str, Any], hwm_kb: dict[int, int]) -> list[dict[str, Any]]:
    """One row per step in execution order: wall, own peak RSS, rows of its inputs and outputs, rows/s."""
    asset_rows = {asset: _rows(meta) for step in log["steps"].values() for asset, meta in step["assets"].items()}
    rows = []
    for key, step in sorted(log["steps"].items(), key=lambda item: item[1].get("start", float("inf"))):
        own = set(step["assets"])
        parents = {p for asset in own for p in log["parents"].get(asset, []) if p not in own}
        rows_in = sum(asset_rows.get(p) or 0 for p in parents) or None
        outs = [r for r in (asset_rows.get(a) for a in own) if r is not None]
        wall = step["end"] - step["start"] if "end" in step and "start" in step else None
        row = {"ratings": n, "step": key, "status": step["status"], "wall_s": round(wall, 2) if wall else None,
               "peak_rss_gb": round(hwm_kb.get(step.get("pid"), 0) / 2**20, 2), "rows_in": rows_in,
               "rows_out": sum(outs) if outs else None,
               "rows_per_s": round(rows_in / wall) if rows_in and wall else None}  # fmt: skip
        training = step["assets"].get("trained_model")
        if training and "examples_per_s" in training:
            row |= {key: training[key] for key in TRAINING_KEYS if key in training}
        evaluation = step["assets"].get("offline_metrics")
        if evaluation:
            row |= {key: evaluation[key] for key in EVALUATION_KEYS if key in evaluation}
        rows.append(row)
    return rows


def _summary(result: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
    sampler: TreeSampler = result["sampler"]
    largest = max((s["peak_rss_gb"] for s in steps), default=0.0)
    load = sampler.load or [0.0]
    return {"ratings": result["n"], "status": result["log"]["status"], "timed_out": result["timed_out"],
            "wall_min": round(result["wall_s"] / 60, 2), "steps_done": sum(s["status"] == "success" for s in steps),
            "largest_step_peak_gb": largest, "graph_peak_gb": round(max(sampler.tree_peak_kb / 2**20, largest), 2),
            "load_avg_mean": round(sum(load) / len(load), 2), "load_avg_max": round(max(load), 2)}  # fmt: skip


def goals(summaries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    at_goal = next((s for s in summaries if s["ratings"] >= GOAL_RATINGS), None)
    wall = at_goal["wall_min"] if at_goal else None
    peak = at_goal["graph_peak_gb"] if at_goal else None
    done = bool(at_goal and at_goal["status"] == "SUCCESS")
    return {
        "25M ratings: whole graph completes": {"goal": "SUCCESS", "value": at_goal["status"] if at_goal else "not run", "passed": done},
        "25M ratings: whole graph wall minutes": {"goal": f"<= {GOAL_WALL_MINUTES:g}", "value": wall,
                                                  "passed": done and wall <= GOAL_WALL_MINUTES},
        "25M ratings: peak RSS GB": {"goal": f"<= {GOAL_PEAK_GB:g}", "value": peak, "passed": done and peak <= GOAL_PEAK_GB},
    }  # fmt: skip


def plot(steps: list[dict[str, Any]], summaries: list[dict[str, Any]], path: Path) -> None:
    """Wall time and peak RSS against N (log-log): the whole graph and the steps that cost the most."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    costly = sorted({s["step"] for s in steps if (s["wall_s"] or 0) > 0},
                    key=lambda k: -max(s["wall_s"] or 0 for s in steps if s["step"] == k))[:6]  # fmt: skip
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    ns = [s["ratings"] for s in summaries]
    left.plot(ns, [s["wall_min"] * 60 for s in summaries], "k-o", label="whole graph")
    right.plot(ns, [s["graph_peak_gb"] for s in summaries], "k-o", label="whole graph")
    for key in costly:
        mine = [s for s in steps if s["step"] == key and s["wall_s"]]
        left.plot([s["ratings"] for s in mine], [s["wall_s"] for s in mine], "-o", label=key, markersize=3)
        right.plot([s["ratings"] for s in mine], [s["peak_rss_gb"] for s in mine], "-o", label=key, markersize=3)
    for ax, label in ((left, "wall seconds"), (right, "peak RSS GB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("ratings N")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    right.axhline(GOAL_PEAK_GB, color="red", linestyle="--", linewidth=0.8, label="12 GB goal")
    left.axhline(GOAL_WALL_MINUTES * 60, color="red", linestyle="--", linewidth=0.8, label="60 min goal")
    left.legend(fontsize=7)
    fig.suptitle("recsys bench pipeline: full_pipeline on synthetic ratings (ml-25m shape)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def merge(reports: list[Path], steps: list[dict[str, Any]], summaries: list[dict[str, Any]]
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """Earlier reports' steps and runs plus these, one run per N (these win), ordered by N: sizes run in separate
    invocations (25M alone, after 1M and 5M) end up in one table and plot."""
    fresh = {s["ratings"] for s in summaries}
    for path in reports:
        earlier = json.loads(Path(path).read_text())
        summaries = summaries + [s for s in earlier["runs"] if s["ratings"] not in fresh]
        steps = steps + [s for s in earlier["rows"] if s["ratings"] not in fresh]
        fresh |= {s["ratings"] for s in earlier["runs"]}
    return sorted(steps, key=lambda s: s["ratings"]), sorted(summaries, key=lambda s: s["ratings"])


def run(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.ratings.split(",") if s.strip()]
    all_steps: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in sizes:
            work = Path(args.work_dir or scratch) / f"ratings-{n}"
            print(f"full_pipeline on {n:,} synthetic ratings ({args.shape} shape) in {work} ...", flush=True)
            result = _run_graph(n, args.shape, work, args.timeout_minutes * 60)
            steps = step_rows(n, result["log"], result["sampler"].hwm_kb)
            all_steps += steps
            summaries.append(_summary(result, steps))
            print(json.dumps(summaries[-1]), flush=True)
    ran = len(summaries)
    all_steps, summaries = merge([Path(p) for p in args.merge], all_steps, summaries)
    plot_path = Path(args.plot) if args.plot else Path(args.json).with_suffix(".png") if args.json else None
    if plot_path:
        plot(all_steps, summaries, plot_path)
        print(f"wrote {plot_path}")
    outcome = goals(summaries)
    write_report("pipeline", all_steps, args.json, runs=summaries, goals=outcome, shape=args.shape,
                 notes="peak_rss_gb: the step process's own VmHWM; graph_peak_gb: the largest sampled RSS sum over the "
                       "run's process tree (or the largest step, if higher); rows_in: rows of the step's inputs that "
                       "report rows; load_avg: 1-minute load average while the run went (a shared machine)")  # fmt: skip
    from recsys_core.bench.report import format_table

    print("\nruns:\n" + format_table(summaries))
    print("\ngoals:")
    for goal, result in outcome.items():
        print(f"  {'PASS' if result['passed'] else 'FAIL'}  {goal}: {result['value']} (goal {result['goal']})")
    return 0 if all(s["status"] == "SUCCESS" for s in summaries) and (ran or args.merge) else 1
