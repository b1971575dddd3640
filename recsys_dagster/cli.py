"""The `recsys` command. Each subcommand is a module with `add_arguments(parser)` and `run(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import sys

# (command words) -> module. Library commands live in recsys_core; only `demo` needs Dagster.
COMMANDS: dict[tuple[str, ...], str] = {
    ("demo",): "recsys_dagster.demo",
    ("bench", "ingest"): "recsys_core.bench.ingest",
    ("bench", "encoder"): "recsys_core.bench.encoder",
    ("serve",): "recsys_core.serving.serve",
    ("bench", "serving"): "recsys_core.bench.serving",
    ("similar-items",): "recsys_core.similar_items",
    ("ab", "report"): "recsys_core.experiments.ab_report_command",
    ("bench", "quality"): "recsys_core.bench.quality",
    ("bench", "experiments"): "recsys_core.bench.experiments",
    ("experiments",): "recsys_core.experiments.command",
    ("simulate",): "recsys_core.experiments.simulate_command",
    ("bench", "events"): "recsys_core.bench.events",
    ("bench", "coldstart"): "recsys_core.bench.coldstart",
    ("forget-user",): "recsys_core.privacy.command",
    ("bench", "pipeline"): "recsys_core.bench.pipeline",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description="Recommender pipeline: demo, benchmarks, serving.")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {(): parser.add_subparsers(dest="command", required=True)}
    for words, module_name in COMMANDS.items():
        for depth in range(1, len(words)):
            prefix = words[:depth]
            if prefix not in groups:
                sub = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{' '.join(prefix)} commands")
                groups[prefix] = sub.add_subparsers(dest=f"command_{depth}", required=True)
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
        sub = groups[words[:-1]].add_parser(words[-1], help=doc, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
