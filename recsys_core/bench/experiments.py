"""Online-experiment statistics on simulated traffic: does the sequential test control false positives under
continuous monitoring (A/A), find real effects within the predicted sample (A/B), and does SRM block a broken split?

Every experiment draws visitors from the synthetic data set's personas, assigns them by the experiment's salted hash,
and simulates their clicks in-process (`simulation.user_table_stream`) on lists of known quality: each persona's
top 10 by true affinity plus noise (0.3 = control; 0.2 = better, 0.4 = worse challenger). The analysis is re-run at
`looks` evenly spaced points while the experiment runs, exactly as the `online_ab_report` sensor would; the first
promote or rollback ends the experiment.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from recsys_core.bench.experiment_overhead import MAX_P99_RATIO, serving_overhead
from recsys_core.bench.report import write_report
from recsys_core.experiments import online
from recsys_core.experiments.assignment import assign_shares
from recsys_core.experiments.definitions import ExperimentDefinition
from recsys_core.experiments.simulation import SimulatedUsers, user_table_stream
from recsys_core.experiments.sequential import users_per_arm_for_power
from recsys_core.experiments.statistics import required_sample_size_per_arm

K = 10
NOISE = {"control": 0.3, "better": 0.2, "worse": 0.4}
BUGGY_SHARES = {"control": 0.45, "treatment": 0.55}
POWER = 0.8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--experiments", type=int, default=200, help="seeded experiments per scenario")
    parser.add_argument("--visitors", type=int, default=4000, help="users per experiment (both arms)")
    parser.add_argument("--looks", type=int, default=40, help="analyses while each experiment runs (>= 10)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--part", default="all", choices=["all", "statistics", "overhead"],
                        help="statistics: the simulated experiments; overhead: serving p99 with vs without an experiment")
    parser.add_argument("--overhead-requests", type=int, default=4000, help="HTTP requests per load phase of the overhead part")
    parser.add_argument("--concurrency", type=int, default=16, help="connections of the serving-overhead load")
    parser.add_argument("--overhead-rounds", type=int, default=4, help="without/with phase pairs of that measurement")
    parser.add_argument("--overhead-treatment", default="alias:challenger",
                        help="the experiment's second arm; alias:champion makes it an A/A test on one model")


@dataclass(frozen=True)
class Outcome:
    action: str
    blocked: bool
    users: int  # visitors seen when the experiment ended (all of them when it never decided)
    srm_detected: bool


def run_experiment(
    definition: ExperimentDefinition, expected_ctr: dict[str, np.ndarray], n_personas: int, *, visitors: int, looks: int,
    seed: int, true_shares: dict[str, float] | None = None,
) -> Outcome:
    """One simulated experiment, analysed at `looks` points; `true_shares` injects an assignment bug."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, visitors + 1) + seed * 10_000_000
    arms = assign_shares(ids, f"{definition.effective_salt}-{seed}", true_shares or definition.shares)
    users = user_table_stream(expected_ctr, arms, rng.integers(1, n_personas + 1, visitors), rng, k=K)
    previous_p, srm_seen = 1.0, False
    for look in range(1, looks + 1):
        n = visitors * look // looks
        analysis = definition.analyse(users.iloc[:n], previous_p=previous_p)
        srm_seen = srm_seen or analysis.srm.failed
        if analysis.sequential is not None:
            previous_p = analysis.sequential.p_value
        if analysis.decision.action != online.CONTINUE:
            return Outcome(analysis.decision.action, False, n, srm_seen)
    return Outcome(online.CONTINUE, analysis.decision.blocked, visitors, srm_seen)


def _predicted_users_per_arm(simulated: SimulatedUsers, definition: ExperimentDefinition, control: np.ndarray,
                             treatment: np.ndarray, seed: int) -> dict[str, int]:
    """Users per arm the power analyses predict (power 0.8), from a large pilot's per-user linearised CTR sd: for the
    mSPRT that runs, and for a fixed-horizon two-sided test (which cannot be peeked at) for comparison."""
    rng = np.random.default_rng(seed)
    pilot = 20_000
    arms = np.where(rng.random(pilot) < 0.5, "control", "treatment")
    personas = rng.integers(1, simulated.n_users + 1, pilot)
    users = user_table_stream({"control": control, "treatment": treatment}, arms, personas, rng, k=K)
    sds = []
    for arm in ("control", "treatment"):
        rows = users[users["arm"] == arm]
        ctr = online.ratio_estimate(rows["clicks"].to_numpy(float), rows["impressions"].to_numpy(float))
        sds.append(math.sqrt(ctr.variance * len(rows)))
    lift = float(treatment.mean() - control.mean())
    return {
        "sequential": users_per_arm_for_power(lift, *sds, tau=definition.mixture_sd, alpha=definition.alpha, power=POWER),
        "fixed": int(required_sample_size_per_arm(lift, *sds, alpha=definition.alpha, power=POWER)),
    }


def run(args: Any) -> int:
    if args.looks < 10:
        raise SystemExit("--looks must be >= 10: the A/A goal is about continuous monitoring")
    started = time.perf_counter()
    rows, goals, facts = statistics(args) if args.part != "overhead" else ([], {}, {})
    overhead_rows, overhead = (serving_overhead(args.overhead_requests, args.concurrency, args.overhead_rounds, args.overhead_treatment)
                               if args.part != "statistics" else ([], {}))  # fmt: skip
    if overhead:
        goals[f"serving p99 with an experiment within {MAX_P99_RATIO - 1:.0%} of without"] = _goal(
            MAX_P99_RATIO, overhead["p99_ratio"], overhead["p99_ratio"] <= MAX_P99_RATIO and not overhead["exposures_dropped"])
    write_report("experiments", rows, args.json, goals=goals, **facts, serving_overhead={"phases": overhead_rows, **overhead},
                 seconds=round(time.perf_counter() - started, 1))  # fmt: skip
    if overhead:
        print(f"\nserving overhead: p99 {overhead['p99_ms_without']:.2f} ms without an experiment, {overhead['p99_ms_with']:.2f} ms "
              f"with one ({overhead['p99_ratio']:.3f}x); {overhead['exposures_logged']:.0f} exposures logged, "
              f"{overhead['exposures_dropped']:.0f} dropped")  # fmt: skip
    print("\ngoals:")
    for name, goal in goals.items():
        print(f"  {'PASS' if goal['passed'] else 'FAIL'}  {name}: {goal['value']:.3f} (goal {goal['goal']})")
    return 0 if all(goal["passed"] for goal in goals.values()) else 1


def statistics(args: Any) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """A/A, A/B and SRM scenarios: (rows, goals, facts for the report)."""
    simulated = SimulatedUsers()
    ctr = {name: simulated.expected_ctr(simulated.ranked_lists(K, noise=noise, seed=1)) for name, noise in NOISE.items()}
    definition = ExperimentDefinition("bench", {"control": "alias:champion", "treatment": "alias:challenger"},
                                      {"control": 0.5, "treatment": 0.5}, min_users_per_arm=100)  # fmt: skip
    scenarios = {
        "A/A": ({"control": ctr["control"], "treatment": ctr["control"]}, None),
        "A/B better": ({"control": ctr["control"], "treatment": ctr["better"]}, None),
        "A/B worse": ({"control": ctr["control"], "treatment": ctr["worse"]}, None),
        "SRM 45/55 (A/B better)": ({"control": ctr["control"], "treatment": ctr["better"]}, BUGGY_SHARES),
    }
    predicted = {name: _predicted_users_per_arm(simulated, definition, ctr["control"], ctr[quality], args.seed)
                 for name, quality in (("A/B better", "better"), ("A/B worse", "worse"))}  # fmt: skip
    # A decision must wait until a 45/55 split would show: the SRM test's own power analysis sets the minimum sample.
    # It is sized for 99.9% power, and that scenario gets twice the visitors so the minimum sample fits in it.
    srm_users = online.srm_detectable_users(definition.shares, BUGGY_SHARES, power=0.999)
    guarded = replace(definition, min_users_per_arm=math.ceil(srm_users / 2))
    rows, outcomes = [], {}
    for name, (expected, true_shares) in scenarios.items():
        visitors = 2 * args.visitors if true_shares else args.visitors
        results = [run_experiment(guarded if true_shares else definition, expected, simulated.n_users, visitors=visitors,
                                  looks=args.looks, seed=args.seed * 1000 + i, true_shares=true_shares)
                   for i in range(args.experiments)]  # fmt: skip
        outcomes[name] = results
        decided = [r.users for r in results if r.action != online.CONTINUE]
        rows.append({
            "scenario": name,
            "experiments": len(results),
            "CTR control": float(expected["control"].mean()),
            "CTR treatment": float(expected["treatment"].mean()),
            "promote": sum(r.action == online.PROMOTE for r in results) / len(results),
            "rollback": sum(r.action == online.ROLLBACK for r in results) / len(results),
            "blocked by SRM": sum(r.blocked for r in results) / len(results),
            "users at decision (median)": float(np.median(decided)) if decided else None,
            "users at decision (p90)": float(np.percentile(decided, 90)) if decided else None,
            "predicted users, mSPRT (both arms)": 2 * predicted[name]["sequential"] if name in predicted else None,
            "predicted users, fixed horizon (both arms)": 2 * predicted[name]["fixed"] if name in predicted else None,
        })  # fmt: skip
    by_name = {row["scenario"]: row for row in rows}
    better, worse = outcomes["A/B better"], outcomes["A/B worse"]
    # The analysis runs at looks, so "within the predicted sample" means by the first look that has reached it.
    step = args.visitors / args.looks
    within = {name: math.ceil(2 * p["sequential"] / step) * step for name, p in predicted.items()}
    # The prediction is for power 0.8, so about 80% should decide within it: the goal allows two binomial standard
    # errors of a share estimated from this many experiments.
    ab_goal = round(POWER - 2 * math.sqrt(POWER * (1 - POWER) / args.experiments), 3)
    goals = {
        "A/A promote share <= 5%": _goal(0.05, by_name["A/A"]["promote"], by_name["A/A"]["promote"] <= 0.05),
        "A/B better promoted within predicted users": _goal(
            ab_goal, share := sum(r.action == online.PROMOTE and r.users <= within["A/B better"] for r in better) / len(better),
            share >= ab_goal),
        "A/B worse rolled back within predicted users": _goal(
            ab_goal, share := sum(r.action == online.ROLLBACK and r.users <= within["A/B worse"] for r in worse) / len(worse),
            share >= ab_goal),
        "A/A any decision (promote or rollback) <= 5%": _goal(
            0.05, share := by_name["A/A"]["promote"] + by_name["A/A"]["rollback"], share <= 0.05),
        "SRM 45/55 detected and blocking (>= 99%)": _goal(
            0.99, share := sum(r.blocked and r.action == online.CONTINUE for r in outcomes["SRM 45/55 (A/B better)"])
            / args.experiments, share >= 0.99),
    }  # fmt: skip
    facts = {"looks": args.looks, "visitors": args.visitors, "mixture_sd": definition.mixture_sd, "alpha": definition.alpha,
             "sequential_test": "mSPRT, normal mixture (Johari et al., Always Valid Inference, Operations Research 2022)",
             "srm_min_users_for_decisions": srm_users}  # fmt: skip
    return rows, goals, facts


def _goal(goal: float, value: float, passed: bool) -> dict[str, Any]:
    return {"goal": goal, "value": value, "passed": bool(passed)}
