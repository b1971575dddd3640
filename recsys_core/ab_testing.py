"""Champion vs challenger: paired offline statistics, a replay-style online simulation, a decision rule, reports.

Both models are scored on the same held-out users, so each metric gives one paired difference per user
(challenger - champion). From those: the mean lift, a seeded percentile bootstrap CI of the mean (resampling users),
a paired t-test and a Wilcoxon signed-rank test (scipy), Cohen's d_z = mean(diff) / sd(diff), and the sample size an
online two-arm test would need per arm to detect the observed lift (two-sided normal approximation,
n = 2 (z_{1-a/2} + z_{1-b})^2 / d^2 with d = lift / pooled per-user sd of the two arms).

The replay simulation splits users 50/50 by a salted, stable hash of the user id; each user sees only their
arm's top-k list and "clicks" the items they interacted with in the held-out period. CTR per arm = clicks /
impressions (k per user), with a bootstrap CI over users.
"""

from __future__ import annotations

import hashlib
import html
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from scipy import stats

from recsys_core.figures import png_base64
from recsys_core.metrics import per_user_ranking_metrics, top_k_positions
from recsys_core.schema import ITEM_ID, USER_ID
from recsys_core.tracking import MlflowSettings

PROMOTE = "promote"
HOLD = "hold"


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def bootstrap_mean_ci(
    values: np.ndarray, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 42, max_cells: int = 4_000_000
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling entries with replacement (vectorised, in row chunks)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, max_cells // x.size)
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, rows_per_chunk):
        stop = min(n_boot, start + rows_per_chunk)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def cohens_d_paired(diff: np.ndarray) -> float:
    """d_z: mean paired difference over its standard deviation (0 when every difference is equal and zero)."""
    d = np.asarray(diff, dtype=np.float64)
    if d.size < 2:
        return float("nan")
    sd = d.std(ddof=1)
    if sd == 0:
        return 0.0 if d.mean() == 0 else math.copysign(math.inf, d.mean())
    return float(d.mean() / sd)


def required_sample_size_per_arm(lift: float, sd_a: float, sd_b: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Users per arm for a two-sided two-sample test to detect `lift` (inf when the lift is 0)."""
    pooled = math.sqrt((sd_a**2 + sd_b**2) / 2)
    if lift == 0 or pooled == 0:
        return math.inf if lift == 0 else 2.0
    effect = abs(lift) / pooled
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(math.ceil(2 * z**2 / effect**2))


@dataclass(frozen=True)
class PairedComparison:
    """One metric, challenger vs champion, on the same users."""

    metric: str
    n_users: int
    champion_mean: float
    challenger_mean: float
    lift: float
    relative_lift: float | None
    ci_low: float
    ci_high: float
    t_pvalue: float | None
    wilcoxon_pvalue: float | None
    cohens_d: float | None
    n_per_arm: float | None


def compare_metric(
    metric: str,
    champion: np.ndarray,
    challenger: np.ndarray,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 42,
    alpha: float = 0.05,
    power: float = 0.8,
) -> PairedComparison:
    a = np.asarray(champion, dtype=np.float64)
    b = np.asarray(challenger, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"{metric}: champion {a.shape} and challenger {b.shape} must be equal-length 1-d arrays")
    if a.size < 2:
        raise ValueError(f"{metric}: a paired comparison needs at least 2 users, got {a.size}")
    diff = b - a
    low, high = bootstrap_mean_ci(diff, n_boot=n_boot, confidence=confidence, seed=seed)
    if np.allclose(diff, 0.0, rtol=0.0, atol=1e-12):
        t_p, w_p = 1.0, 1.0
    elif np.allclose(diff, diff[0], rtol=1e-9, atol=1e-12):  # constant shift: the t statistic is infinite
        t_p, w_p = 0.0, float(stats.wilcoxon(diff, zero_method="zsplit").pvalue)
    else:
        t_p = float(stats.ttest_rel(b, a).pvalue)
        w_p = float(stats.wilcoxon(diff, zero_method="zsplit").pvalue)
    lift = float(diff.mean())
    return PairedComparison(
        metric=metric,
        n_users=int(a.size),
        champion_mean=float(a.mean()),
        challenger_mean=float(b.mean()),
        lift=lift,
        relative_lift=_finite_or_none(lift / a.mean()) if a.mean() != 0 else None,
        ci_low=low,
        ci_high=high,
        t_pvalue=_finite_or_none(t_p),
        wilcoxon_pvalue=_finite_or_none(w_p),
        cohens_d=_finite_or_none(cohens_d_paired(diff)),
        n_per_arm=_finite_or_none(required_sample_size_per_arm(lift, a.std(ddof=1), b.std(ddof=1), alpha=alpha, power=power)),
    )


def align_users(champion: pd.DataFrame, challenger: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both per-user tables restricted to their common users, in the same order; refuses disjoint tables."""
    common = champion.index.intersection(challenger.index).sort_values()
    if len(common) == 0:
        raise ValueError("champion and challenger per-user tables share no users")
    return champion.loc[common], challenger.loc[common]


def compare_per_user(
    champion: pd.DataFrame, challenger: pd.DataFrame, metrics: list[str], **kwargs: Any
) -> dict[str, PairedComparison]:
    """Paired comparison of each metric column of two per-user tables (index user_id) on their common users."""
    missing = [name for name in metrics if name not in champion.columns or name not in challenger.columns]
    if missing:
        raise ValueError(f"metrics {missing} missing from the per-user tables ({list(champion.columns)})")
    a, b = align_users(champion, challenger)
    return {name: compare_metric(name, a[name].to_numpy(), b[name].to_numpy(), **kwargs) for name in metrics}


def assign_arms(user_ids: np.ndarray, salt: str = "recsys-ab") -> np.ndarray:
    """True = challenger arm. splitmix64 of (user id XOR salt hash): stable across runs, machines and processes."""
    salt_key = np.uint64(int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little"))
    with np.errstate(over="ignore"):
        z = np.asarray(user_ids, dtype=np.int64).astype(np.uint64) ^ salt_key
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z & np.uint64(1)).astype(bool)


@dataclass(frozen=True)
class ArmResult:
    arm: str
    n_users: int
    impressions: int
    clicks: int
    ctr: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class ReplayResult:
    k: int
    salt: str
    champion: ArmResult
    challenger: ArmResult
    ctr_lift: float
    p_value: float | None


def _arm_clicks(recs: pd.DataFrame, held_out: pd.DataFrame, users: np.ndarray, k: int) -> np.ndarray:
    top = top_k_positions(recs[recs[USER_ID].isin(users)], k)
    hits = top.merge(held_out, on=[USER_ID, ITEM_ID], how="inner")
    return hits.groupby(USER_ID).size().reindex(users, fill_value=0).to_numpy(np.float64)


def replay_simulation(
    champion_recs: pd.DataFrame,
    challenger_recs: pd.DataFrame,
    held_out: pd.DataFrame,
    *,
    k: int = 10,
    salt: str = "recsys-ab",
    n_boot: int = 2000,
    seed: int = 42,
) -> ReplayResult:
    """Simulated online test on held-out interactions: each held-out user sees one arm's list (hash split)."""
    truth = held_out[[USER_ID, ITEM_ID]].astype(np.int64).drop_duplicates()
    users = np.unique(truth[USER_ID].to_numpy())
    to_challenger = assign_arms(users, salt)
    per_user_ctr: dict[str, np.ndarray] = {}
    arms: dict[str, ArmResult] = {}
    for arm, recs, members in (
        ("champion", champion_recs, users[~to_challenger]),
        ("challenger", challenger_recs, users[to_challenger]),
    ):
        if members.size == 0:
            raise ValueError(f"the hash split put no held-out user in the {arm} arm ({users.size} users)")
        clicks = _arm_clicks(recs, truth, members, k)
        ctr = clicks / k
        low, high = bootstrap_mean_ci(ctr, n_boot=n_boot, seed=seed)
        per_user_ctr[arm] = ctr
        arms[arm] = ArmResult(arm, int(members.size), int(members.size * k), int(clicks.sum()), float(ctr.mean()), low, high)
    a, b = per_user_ctr["champion"], per_user_ctr["challenger"]
    p_value = None
    if a.size > 1 and b.size > 1:
        if np.ptp(a) > 1e-12 or np.ptp(b) > 1e-12:
            p_value = _finite_or_none(float(stats.ttest_ind(b, a, equal_var=False).pvalue))
        else:  # both arms constant: either identical or certainly different
            p_value = 1.0 if a.mean() == b.mean() else 0.0
    return ReplayResult(k, salt, arms["champion"], arms["challenger"], float(b.mean() - a.mean()), p_value)


@dataclass(frozen=True)
class DecisionRule:
    """Promote when the primary metric's lift is >= `min_lift` and (optionally) its CI lies above 0, and no
    guard-rail metric drops by more than its relative tolerance. "Worse beyond tolerance" (what the blocking
    check tests) needs the drop to be beyond noise too: the primary metric drops by more than `max_regression`
    (relative), or a guard-rail by more than its tolerance, with that metric's whole CI below 0."""

    primary_metric: str = "ndcg@10"
    min_lift: float = 0.0
    require_ci_above_zero: bool = True
    guardrails: dict[str, float] = field(default_factory=lambda: {"recall@10": 0.02, "hr@10": 0.02})
    max_regression: float = 0.02

    def metrics(self) -> list[str]:
        return list(dict.fromkeys([self.primary_metric, *self.guardrails]))


@dataclass(frozen=True)
class Decision:
    action: str
    reasons: list[str]
    worse_beyond_tolerance: bool


def _relative_change(comparison: PairedComparison) -> float:
    if comparison.champion_mean == 0:
        return 0.0 if comparison.challenger_mean == 0 else math.inf
    return comparison.lift / abs(comparison.champion_mean)


def decide(comparisons: dict[str, PairedComparison] | None, rule: DecisionRule) -> Decision:
    """Applies the rule; `comparisons=None` means there is no champion yet, so the challenger becomes it."""
    if comparisons is None:
        return Decision(PROMOTE, ["no champion in the registry yet: the first model becomes champion"], False)
    missing = [name for name in rule.metrics() if name not in comparisons]
    if missing:
        raise ValueError(f"decision rule needs comparisons for {missing}")
    primary = comparisons[rule.primary_metric]
    reasons: list[str] = []
    promote = True
    ci = f"[{primary.ci_low:+.4f}, {primary.ci_high:+.4f}]"
    if primary.lift < rule.min_lift:
        promote = False
        reasons.append(f"{rule.primary_metric} lift {primary.lift:+.4f} is below the minimum {rule.min_lift:+.4f}")
    elif rule.require_ci_above_zero and primary.ci_low <= 0:
        promote = False
        reasons.append(f"{rule.primary_metric} lift {primary.lift:+.4f} has CI {ci} that is not above 0")
    else:
        reasons.append(f"{rule.primary_metric} lift {primary.lift:+.4f} (CI {ci}) meets the rule")
    primary_change = _relative_change(primary)
    worse = primary_change < -rule.max_regression and primary.ci_high < 0
    if worse:
        reasons.append(f"{rule.primary_metric} is {-primary_change:.1%} worse than the champion (tolerance {rule.max_regression:.1%})")
    for name, tolerance in rule.guardrails.items():
        change = _relative_change(comparisons[name])
        if change < -tolerance:
            promote = False
            worse = worse or comparisons[name].ci_high < 0
            reasons.append(f"guard-rail {name} drops {-change:.1%} (tolerance {tolerance:.1%})")
        else:
            reasons.append(f"guard-rail {name} change {change:+.1%} within tolerance {tolerance:.1%}")
    return Decision(PROMOTE if promote and not worse else HOLD, reasons, worse)


@dataclass
class ABReport:
    """Everything the report shows; `to_dict()` is the JSON-able summary (per-user arrays left out)."""

    challenger_label: str
    champion_label: str | None
    k: int
    n_users: int
    rule: DecisionRule
    decision: Decision
    comparisons: dict[str, PairedComparison] | None
    replay: ReplayResult | None
    primary_diffs: np.ndarray | None = None
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "challenger": self.challenger_label,
            "champion": self.champion_label,
            "k": self.k,
            "n_users": self.n_users,
            "rule": asdict(self.rule),
            "decision": asdict(self.decision),
            "comparisons": {name: asdict(c) for name, c in (self.comparisons or {}).items()},
            "replay": asdict(self.replay) if self.replay else None,
            "challenger_metrics": self.challenger_metrics,
            "champion_metrics": self.champion_metrics,
        }


def build_ab_report(
    challenger_recs: pd.DataFrame,
    held_out: pd.DataFrame,
    *,
    champion_recs: pd.DataFrame | None,
    challenger_label: str,
    champion_label: str | None,
    rule: DecisionRule | None = None,
    k: int = 10,
    n_boot: int = 2000,
    seed: int = 42,
    salt: str = "recsys-ab",
) -> ABReport:
    """Scores both rec lists on the same held-out users, compares them and applies the decision rule."""
    rule = rule or DecisionRule(primary_metric=f"ndcg@{k}", guardrails={f"recall@{k}": 0.02, f"hr@{k}": 0.02})
    challenger_table = per_user_ranking_metrics(challenger_recs, held_out, k)
    challenger_means = {name: float(v) for name, v in challenger_table.mean().items()}
    if champion_recs is None:
        return ABReport(challenger_label, None, k, len(challenger_table), rule, decide(None, rule), None, None,
                        challenger_metrics=challenger_means)
    champion_table = per_user_ranking_metrics(champion_recs, held_out, k)
    metrics = list(dict.fromkeys([*rule.metrics(), *challenger_table.columns]))
    comparisons = compare_per_user(champion_table, challenger_table, metrics, n_boot=n_boot, seed=seed)
    a, b = align_users(champion_table, challenger_table)
    return ABReport(
        challenger_label=challenger_label,
        champion_label=champion_label,
        k=k,
        n_users=len(a),
        rule=rule,
        decision=decide(comparisons, rule),
        comparisons=comparisons,
        replay=replay_simulation(champion_recs, challenger_recs, held_out, k=k, salt=salt, n_boot=n_boot, seed=seed),
        primary_diffs=(b[rule.primary_metric] - a[rule.primary_metric]).to_numpy(),
        challenger_metrics=challenger_means,
        champion_metrics={name: float(v) for name, v in champion_table.mean().items()},
    )


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def comparison_rows(report: ABReport) -> list[dict[str, str]]:
    rows = []
    for c in (report.comparisons or {}).values():
        rows.append(
            {
                "metric": c.metric,
                "champion": _fmt(c.champion_mean),
                "challenger": _fmt(c.challenger_mean),
                "lift": f"{c.lift:+.4f}",
                "relative": "n/a" if c.relative_lift is None else f"{c.relative_lift:+.1%}",
                "95% CI": f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]",
                "t-test p": _fmt(c.t_pvalue, 3),
                "Wilcoxon p": _fmt(c.wilcoxon_pvalue, 3),
                "Cohen's d": _fmt(c.cohens_d, 3),
                "users/arm needed": _fmt(c.n_per_arm),
            }
        )
    return rows


def _markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[col]) for col in header) + " |" for row in rows]
    return "\n".join(lines)


def replay_rows(replay: ReplayResult) -> list[dict[str, str]]:
    return [
        {
            "arm": arm.arm,
            "users": str(arm.n_users),
            "impressions": str(arm.impressions),
            "clicks": str(arm.clicks),
            "CTR": f"{arm.ctr:.4f}",
            "95% CI": f"[{arm.ci_low:.4f}, {arm.ci_high:.4f}]",
        }
        for arm in (replay.champion, replay.challenger)
    ]


def render_markdown(report: ABReport) -> str:
    """Short summary for the Dagster UI."""
    verdict = report.decision.action.upper()
    champion = report.champion_label or "none (first model)"
    lines = [
        f"## A/B decision: **{verdict}**",
        f"Challenger `{report.challenger_label}` vs champion `{champion}` on {report.n_users} held-out users, k={report.k}.",
        "",
        *[f"- {reason}" for reason in report.decision.reasons],
    ]
    if report.comparisons:
        lines += ["", "### Paired offline comparison (challenger - champion)", _markdown_table(comparison_rows(report))]
    if report.replay:
        r = report.replay
        lines += [
            "",
            f"### Replay simulation (50/50 hash split, salt `{r.salt}`)",
            _markdown_table(replay_rows(r)),
            "",
            f"CTR lift {r.ctr_lift:+.4f}, Welch p = {_fmt(r.p_value, 3)}",
        ]
    return "\n".join(lines)


def report_figures(report: ABReport) -> dict[str, str]:
    """Base64 PNGs: metric means per arm, the primary metric's per-user differences, replay CTR per arm."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figures: dict[str, str] = {}
    if report.comparisons:
        comps = list(report.comparisons.values())
        x = np.arange(len(comps))
        fig, ax = plt.subplots(figsize=(7.5, 3.2))
        ax.bar(x - 0.2, [c.champion_mean for c in comps], 0.4, label="champion", color="#8c9bab")
        ax.bar(x + 0.2, [c.challenger_mean for c in comps], 0.4, label="challenger", color="#2f6fb0")
        ax.set_xticks(x, [c.metric for c in comps])
        ax.set_ylabel("mean over users")
        ax.legend()
        ax.set_title("Offline metrics per arm")
        figures["Offline metrics per arm"] = png_base64(fig, dpi=110)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(7.5, 3.2))
        ax.errorbar(
            x, [c.lift for c in comps],
            yerr=[[c.lift - c.ci_low for c in comps], [c.ci_high - c.lift for c in comps]],
            fmt="o", color="#2f6fb0", capsize=4,
        )
        ax.axhline(0, color="#444", linewidth=0.8)
        ax.set_xticks(x, [c.metric for c in comps])
        ax.set_ylabel("challenger - champion")
        ax.set_title("Paired lift with 95% bootstrap CI")
        figures["Paired lift with bootstrap CI"] = png_base64(fig, dpi=110)
        plt.close(fig)
    if report.primary_diffs is not None and len(report.primary_diffs):
        fig, ax = plt.subplots(figsize=(7.5, 3.2))
        ax.hist(report.primary_diffs, bins=40, color="#2f6fb0")
        ax.axvline(0, color="#444", linewidth=0.8)
        ax.set_xlabel(f"per-user {report.rule.primary_metric} difference")
        ax.set_ylabel("users")
        figures["Per-user differences"] = png_base64(fig, dpi=110)
        plt.close(fig)
    if report.replay:
        arms = [report.replay.champion, report.replay.challenger]
        fig, ax = plt.subplots(figsize=(7.5, 3.2))
        ax.bar([a.arm for a in arms], [a.ctr for a in arms], color=["#8c9bab", "#2f6fb0"],
               yerr=[[a.ctr - a.ci_low for a in arms], [a.ci_high - a.ctr for a in arms]], capsize=6)
        ax.set_ylabel(f"CTR@{report.replay.k}")
        ax.set_title("Replay simulation")
        figures["Replay CTR per arm"] = png_base64(fig, dpi=110)
        plt.close(fig)
    return figures


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1160px;padding:0 1rem;color:#1d2733}
h1{font-size:1.5rem} figure{margin:0} figcaption{font-weight:600;margin:.4rem 0} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde3ea;padding-bottom:.3rem}
table{border-collapse:collapse;font-size:.85rem;margin:.6rem 0} th,td{border:1px solid #dde3ea;padding:.3rem .55rem;text-align:right;white-space:nowrap}
th{background:#f2f5f8} td:first-child,th:first-child{text-align:left}
.verdict{display:inline-block;padding:.35rem .9rem;border-radius:4px;color:#fff;font-weight:600}
.promote{background:#2e8b57} .hold{background:#b8860b} .meta{color:#5b6b7c;font-size:.9rem}
img{max-width:100%;border:1px solid #eef1f4;margin:.4rem 0}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:.5rem 1.5rem}
.wide{overflow-x:auto}
"""


def _html_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(col)}</th>" for col in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def render_html(report: ABReport, *, title: str = "A/B report") -> str:
    """Self-contained HTML: inline CSS, plots embedded as base64 PNGs; opens offline."""
    action = report.decision.action
    rule = report.rule
    guardrails = ", ".join(f"{name} (max drop {tol:.1%})" for name, tol in rule.guardrails.items()) or "none"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>Challenger <b>{html.escape(report.challenger_label)}</b> vs champion "
        f"<b>{html.escape(report.champion_label or 'none (first model)')}</b> &middot; {report.n_users} held-out users "
        f"&middot; k = {report.k}</p>",
        f"<p><span class='verdict {action}'>{action.upper()}</span></p>",
        "<ul>" + "".join(f"<li>{html.escape(reason)}</li>" for reason in report.decision.reasons) + "</ul>",
        f"<p class='meta'>Rule: primary metric {html.escape(rule.primary_metric)}, minimum lift {rule.min_lift:+.4f}, "
        f"CI above 0 required: {rule.require_ci_above_zero}, guard-rails: {html.escape(guardrails)}, "
        f"worse beyond tolerance (blocks promotion) when {html.escape(rule.primary_metric)} drops more than "
        f"{rule.max_regression:.1%} or a guard-rail more than its tolerance, with that metric's CI below 0.</p>",
    ]
    if report.comparisons:
        parts += ["<h2>Paired offline comparison (challenger &minus; champion, same users)</h2>", _html_table(comparison_rows(report)),
                  "<p class='meta'>CI: percentile bootstrap over users. Users/arm needed: two-sided test at "
                  "&alpha; = 0.05 and power 0.8 for the observed lift.</p>"]
    else:
        parts += ["<h2>Challenger metrics</h2>",
                  _html_table([{"metric": k, "value": _fmt(v)} for k, v in report.challenger_metrics.items()])]
    if report.replay:
        r = report.replay
        parts += [f"<h2>Replay simulation (50/50 hash split, salt <code>{html.escape(r.salt)}</code>)</h2>",
                  _html_table(replay_rows(r)), f"<p>CTR lift {r.ctr_lift:+.4f}, Welch t-test p = {_fmt(r.p_value, 3)}</p>"]
    figures = report_figures(report)
    if figures:
        parts.append("<h2>Plots</h2><div class='plots'>")
        parts += [f"<figure><figcaption>{html.escape(name)}</figcaption><img alt='{html.escape(name)}' "
                  f"src='data:image/png;base64,{data}'></figure>" for name, data in figures.items()]
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


CHAMPION = "champion"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    serving_dir: str

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


def serving_dir_of(settings: MlflowSettings, name: str, version: str) -> str:
    """The ONNX serving directory of a registered version: its `recsys.onnx_dir` tag when that folder still exists,
    else the version's artefacts downloaded (the export registers the whole directory as extra files)."""
    model_version = settings.client().get_model_version(name, version)
    tagged = model_version.tags.get("recsys.onnx_dir")
    if tagged and (Path(tagged) / "manifest.json").exists():
        return tagged
    uri = settings.resolved_tracking_uri()
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", tracking_uri=uri, registry_uri=uri))
    manifests = sorted(local.rglob("manifest.json"))
    if not manifests:
        raise FileNotFoundError(f"{name} v{version}: no serving directory (no manifest.json) in its artefacts at {local}")
    return str(manifests[0].parent)


def current_champion(settings: MlflowSettings, name: str) -> RegisteredModel | None:
    """The version behind alias `champion`, or None when no model was ever promoted."""
    try:
        version = settings.client().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return RegisteredModel(name, str(version.version), serving_dir_of(settings, name, str(version.version)))


def apply_decision(settings: MlflowSettings, challenger: RegisteredModel, decision: Decision) -> bool:
    """Moves alias `champion` to the challenger on "promote" (never when it is worse beyond tolerance); tags the
    version with the decision either way. Returns whether the alias moved."""
    client = settings.client()
    client.set_model_version_tag(challenger.name, challenger.version, "recsys.ab_decision", decision.action)
    if decision.action != PROMOTE or decision.worse_beyond_tolerance:
        return False
    client.set_registered_model_alias(challenger.name, CHAMPION, challenger.version)
    return True


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
