"""Champion vs challenger offline: paired statistics on the same held-out users, a replay-style online simulation,
a decision rule.

Both models are scored on the same held-out users, so each metric gives one paired difference per user
(challenger - champion). From those: the mean lift, a seeded percentile bootstrap CI of the mean (resampling users),
a paired t-test and a Wilcoxon signed-rank test (scipy), Cohen's d_z = mean(diff) / sd(diff), and the sample size an
online two-arm test would need per arm to detect the observed lift.

The replay simulation splits users 50/50 by a salted, stable hash of the user id; each user sees only their
arm's top-k list and "clicks" the items they interacted with in the held-out period. CTR per arm = clicks /
impressions (k per user), with a bootstrap CI over users.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from recsys_core.experiments.assignment import assign_arms
from recsys_core.experiments.statistics import (
    bootstrap_mean_ci,
    cohens_d_paired,
    finite_or_none,
    required_sample_size_per_arm,
)
from recsys_core.metrics import per_user_ranking_metrics, top_k_positions
from recsys_core.schema import ITEM_ID, USER_ID

PROMOTE = "promote"
HOLD = "hold"


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
        relative_lift=finite_or_none(lift / a.mean()) if a.mean() != 0 else None,
        ci_low=low,
        ci_high=high,
        t_pvalue=finite_or_none(t_p),
        wilcoxon_pvalue=finite_or_none(w_p),
        cohens_d=finite_or_none(cohens_d_paired(diff)),
        n_per_arm=finite_or_none(required_sample_size_per_arm(lift, a.std(ddof=1), b.std(ddof=1), alpha=alpha, power=power)),
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
            p_value = finite_or_none(float(stats.ttest_ind(b, a, equal_var=False).pvalue))
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
