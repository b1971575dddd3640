"""`recsys ab report`: the offline A/B report from two top-k lists on the same held-out set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from recsys_core.experiments.offline import PROMOTE, build_ab_report
from recsys_core.experiments.reports import render_html, render_markdown
from recsys_core.schema import ITEM_ID, USER_ID


def _read_frame(path: str, columns: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path, sep=None, engine="python")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; it has {list(frame.columns)}")
    return frame


def add_arguments(parser: Any) -> None:
    """`recsys ab report`: two top-k lists (e.g. from `recsys bench quality --recs-out`) on the same held-out set."""
    parser.add_argument("--challenger", required=True, help="recs file (parquet/csv: user_id, item_id, rank)")
    parser.add_argument("--champion", help="recs file of the current champion; omitted = first model")
    parser.add_argument("--held-out", required=True, help="held-out interactions (parquet/csv: user_id, item_id)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--html", default="ab_report.html")
    parser.add_argument("--markdown", default="")
    parser.add_argument("--json", default="")


def run(args: Any) -> int:
    """Writes the HTML report (and Markdown / JSON when asked); exit code 0 = promote, 3 = hold."""
    import json

    challenger = _read_frame(args.challenger, (USER_ID, ITEM_ID, "rank"))
    champion = _read_frame(args.champion, (USER_ID, ITEM_ID, "rank")) if args.champion else None
    held_out = _read_frame(args.held_out, (USER_ID, ITEM_ID))
    report = build_ab_report(
        challenger, held_out, champion_recs=champion, challenger_label=Path(args.challenger).stem,
        champion_label=Path(args.champion).stem if args.champion else None, k=args.k, n_boot=args.n_boot, seed=args.seed,
    )  # fmt: skip
    Path(args.html).write_text(render_html(report))
    markdown = render_markdown(report)
    if args.markdown:
        Path(args.markdown).write_text(markdown)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2, default=str))
    print(markdown)
    print(f"\nwrote {args.html}")
    return 0 if report.decision.action == PROMOTE else 3
