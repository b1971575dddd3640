"""`recsys experiments create|list|stop`: manage online experiment definitions (SQLite under $RECSYS_HOME)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from recsys_core.experiments.definitions import ExperimentDefinition, ExperimentStore
from recsys_core.experiments.online import Guardrail


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise SystemExit(f"{flag} {value!r}: expected NAME=VALUE")
        pairs[key] = rest
    return pairs


def _guardrail(value: str) -> Guardrail:
    """METRIC=MAX_RELATIVE_CHANGE[:higher], `higher` when a higher value is better (e.g. coverage)."""
    metric, _, spec = value.partition("=")
    tolerance, _, direction = spec.partition(":")
    try:
        return Guardrail(metric, float(tolerance), direction == "higher")
    except ValueError:
        raise SystemExit(f"--guardrail {value!r}: expected METRIC=TOLERANCE[:higher], e.g. latency_p99_ms=0.1") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=None, help="SQLite file (default $RECSYS_HOME/experiments.sqlite)")
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="define and start an experiment")
    create.add_argument("name")
    create.add_argument("--arm", action="append", required=True, metavar="ARM=REF",
                        help="arm name = alias:NAME or version:N; twice, control first (default shares 50/50)")
    create.add_argument("--share", action="append", default=[], metavar="ARM=SHARE", help="traffic share per arm")
    create.add_argument("--salt", default="", help="assignment salt (default: the name)")
    create.add_argument("--primary-metric", default="ctr", choices=["ctr", "clicks_per_user"])
    create.add_argument("--guardrail", action="append", type=_guardrail, metavar="METRIC=TOL[:higher]",
                        help="replaces the default guard-rails (latency_p99_ms, fallback_rate, coverage)")
    create.add_argument("--min-users-per-arm", type=int, default=200)
    create.add_argument("--alpha", type=float, default=0.05)
    create.add_argument("--mixture-sd", type=float, default=0.02, help="mSPRT mixture sd, in primary-metric units")
    create.add_argument("--attribution-window-s", type=float, default=3600.0)
    actions.add_parser("list", help="all experiments, running and stopped").add_argument("--json", action="store_true")
    stop = actions.add_parser("stop", help="stop an experiment (its users go back to the control)")
    stop.add_argument("name")
    stop.add_argument("--reason", default="")


def run(args: Any) -> int:
    store = ExperimentStore(args.store)
    try:
        if args.action == "create":
            arms = _pairs(args.arm, "--arm")
            shares = {arm: float(share) for arm, share in _pairs(args.share, "--share").items()} or {
                arm: 1 / len(arms) for arm in arms}  # fmt: skip
            optional = {"guardrails": args.guardrail} if args.guardrail else {}
            created = store.create(ExperimentDefinition(
                args.name, arms, shares, salt=args.salt, primary_metric=args.primary_metric,
                min_users_per_arm=args.min_users_per_arm, alpha=args.alpha, mixture_sd=args.mixture_sd,
                attribution_window_s=args.attribution_window_s, **optional))  # fmt: skip
            print(f"created experiment {created.name}: {created.arms}, shares {created.shares}, salt {created.effective_salt!r}")
        elif args.action == "stop":
            stopped = store.stop(args.name, args.reason)
            print(f"experiment {stopped.name} is {stopped.status}")
        else:
            experiments = store.list()
            if args.json:
                print(json.dumps([json.loads(e.to_json()) for e in experiments], indent=2))
            for e in [] if args.json else experiments:
                print(f"{e.name}\t{e.status}\t{' vs '.join(f'{a}={r} ({e.shares[a]:.0%})' for a, r in e.arms.items())}\t"
                      f"{e.primary_metric}")  # fmt: skip
    except (ValueError, KeyError) as error:
        raise SystemExit(f"recsys experiments {args.action}: {error.args[0]}") from None
    return 0
