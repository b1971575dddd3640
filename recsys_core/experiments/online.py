"""Online analysis of a running experiment: per-arm metrics with CIs over users, a sample-ratio-mismatch test, the
always-valid sequential test on the primary metric, guard-rails, and the decision with its reasons.

Users, not impressions, are the independent units: one user's impressions are correlated, so every CI is computed
over users. CTR = clicks / impressions is a ratio of per-user means, its variance from the delta method
(Deng, Knoblich, Lu, "Applying the Delta Method in Metric Analytics", KDD 2018); clicks per user is a plain mean.
The analysis works from a per-user table (user_id, arm, exposures, impressions, clicks), built from exposure and
click records by `user_table`, or directly by a simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from recsys_core.experiments.attribution import ARM, ATTRIBUTED, REQUEST_ID, STATUS
from recsys_core.experiments.sequential import SequentialResult, msprt
from recsys_core.schema import ITEM_ID, USER_ID

PROMOTE, ROLLBACK, CONTINUE = "promote", "rollback", "continue"
METRICS = ("ctr", "clicks_per_user")
Z95 = float(stats.norm.ppf(0.975))


def user_table(exposures: pd.DataFrame, attributed_clicks: pd.DataFrame) -> pd.DataFrame:
    """One row per exposed user: arm, exposures (responses), impressions (items shown), clicks (attributed only)."""
    per_user = exposures.groupby(USER_ID).agg(
        arm=(ARM, "first"), arms=(ARM, "nunique"), exposures=(REQUEST_ID, "nunique"), impressions=(ITEM_ID, "size")
    )
    switched = per_user.index[per_user["arms"] > 1]
    if len(switched):
        raise ValueError(f"{len(switched)} user(s) exposed to more than one arm (assignment is not sticky), e.g. "
                         f"user_id {switched[0]}")  # fmt: skip
    credited = attributed_clicks[attributed_clicks[STATUS] == ATTRIBUTED]
    per_user["clicks"] = credited.groupby(USER_ID).size().reindex(per_user.index, fill_value=0)
    return per_user.drop(columns="arms").reset_index()


@dataclass(frozen=True)
class Estimate:
    """A per-arm metric: value and the variance of that value (over users)."""

    value: float
    variance: float

    def ci(self) -> tuple[float, float]:
        half = Z95 * math.sqrt(max(self.variance, 0.0))
        return self.value - half, self.value + half


def ratio_estimate(numerator: np.ndarray, denominator: np.ndarray) -> Estimate:
    """sum(numerator) / sum(denominator) over users, delta-method variance."""
    n = len(numerator)
    if n == 0 or denominator.sum() == 0:
        return Estimate(math.nan, math.nan)
    mu_x, mu_y = numerator.mean(), denominator.mean()
    if n < 2:
        return Estimate(mu_x / mu_y, math.nan)
    cov = np.cov(numerator, denominator, ddof=1)
    variance = (cov[0, 0] / mu_y**2 - 2 * mu_x * cov[0, 1] / mu_y**3 + mu_x**2 * cov[1, 1] / mu_y**4) / n
    return Estimate(float(mu_x / mu_y), float(variance))


def mean_estimate(values: np.ndarray) -> Estimate:
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan)
    return Estimate(float(values.mean()), float(values.var(ddof=1) / n) if n > 1 else math.nan)


@dataclass(frozen=True)
class ArmStats:
    arm: str
    users: int
    exposures: int
    impressions: int
    clicks: int
    ctr: Estimate
    clicks_per_user: Estimate

    def metric(self, name: str) -> Estimate:
        if name not in METRICS:
            raise ValueError(f"unknown primary metric {name!r}; known: {list(METRICS)}")
        return getattr(self, name)


def arm_stats(users: pd.DataFrame, arms: list[str]) -> dict[str, ArmStats]:
    result = {}
    for arm in arms:
        rows = users[users[ARM] == arm]
        clicks = rows["clicks"].to_numpy(np.float64)
        impressions = rows["impressions"].to_numpy(np.float64)
        result[arm] = ArmStats(arm, len(rows), int(rows["exposures"].sum()), int(impressions.sum()), int(clicks.sum()),
                               ratio_estimate(clicks, impressions), mean_estimate(clicks))  # fmt: skip
    return result


@dataclass(frozen=True)
class SrmResult:
    observed: dict[str, int]
    expected_share: dict[str, float]
    p_value: float
    failed: bool


def srm_test(observed: dict[str, int], shares: dict[str, float], *, threshold: float = 0.001) -> SrmResult:
    """Chi-square goodness of fit of users per arm to the configured shares (renormalised over the arms); fails
    below `threshold` (0.001: an SRM is a bug, so the test is strict against false alarms)."""
    total_share = sum(shares.values())
    expected_share = {arm: share / total_share for arm, share in shares.items()}
    counts = np.array([observed.get(arm, 0) for arm in shares], dtype=np.float64)
    if counts.sum() == 0:
        return SrmResult(dict(observed), expected_share, 1.0, False)
    p = float(stats.chisquare(counts, counts.sum() * np.array(list(expected_share.values()))).pvalue)
    return SrmResult({arm: int(c) for arm, c in zip(shares, counts)}, expected_share, p, p < threshold)


def srm_detectable_users(
    shares: dict[str, float], true_shares: dict[str, float], *, threshold: float = 0.001, power: float = 0.99
) -> int:
    """Total users at which `srm_test` detects an assignment that really follows `true_shares` with probability
    `power` (noncentral chi-square). A decision taken on fewer users may come before a broken split shows."""
    expected = np.array([shares[a] for a in shares]) / sum(shares.values())
    actual = np.array([true_shares[a] for a in shares]) / sum(true_shares.values())
    per_user = float(((actual - expected) ** 2 / expected).sum())
    if per_user == 0:
        raise ValueError(f"true shares {true_shares} equal the configured {shares}: there is no mismatch to detect")
    critical = stats.chi2.ppf(1 - threshold, len(shares) - 1)
    n = 1
    while stats.ncx2.sf(critical, len(shares) - 1, n * per_user) < power:
        n *= 2
    low = n // 2
    while low < n:
        mid = (low + n) // 2
        low, n = (mid + 1, n) if stats.ncx2.sf(critical, len(shares) - 1, mid * per_user) < power else (low, mid)
    return n


@dataclass(frozen=True)
class Guardrail:
    """A metric of the challenger arm may be worse than the control's by at most `max_relative_change`."""

    metric: str
    max_relative_change: float
    higher_is_better: bool = False


@dataclass(frozen=True)
class GuardrailResult:
    metric: str
    control: float
    treatment: float
    relative_change: float
    passed: bool


def guardrail_metrics(exposures: pd.DataFrame, arm: str, catalogue_size: int | None = None) -> dict[str, float]:
    """Per arm, from exposure columns when present: latency_p99_ms (`latency_ms`), fallback_rate (`fallback`),
    coverage (distinct items shown / catalogue size)."""
    rows = exposures[exposures[ARM] == arm]
    requests = rows.drop_duplicates(REQUEST_ID)
    metrics: dict[str, float] = {}
    if "latency_ms" in rows.columns and len(requests):
        metrics["latency_p99_ms"] = float(np.percentile(requests["latency_ms"].to_numpy(np.float64), 99))
    if "fallback" in rows.columns and len(requests):
        metrics["fallback_rate"] = float(requests["fallback"].astype(bool).mean())
    if catalogue_size:
        metrics["coverage"] = rows[ITEM_ID].nunique() / catalogue_size
    return metrics


def check_guardrails(control: dict[str, float], treatment: dict[str, float], guardrails: list[Guardrail]) -> list[GuardrailResult]:
    results = []
    for rail in guardrails:
        if rail.metric not in control or rail.metric not in treatment:
            continue
        a, b = control[rail.metric], treatment[rail.metric]
        change = (b - a) / abs(a) if a else (0.0 if b == a else math.copysign(math.inf, b - a))
        worse = -change if rail.higher_is_better else change
        results.append(GuardrailResult(rail.metric, a, b, change, worse <= rail.max_relative_change))
    return results


@dataclass(frozen=True)
class Decision:
    action: str
    reasons: list[str]
    blocked: bool = False  # an SRM: the data cannot be trusted, so no decision is taken


@dataclass
class OnlineAnalysis:
    control: str
    treatment: str
    primary_metric: str
    arms: dict[str, ArmStats]
    srm: SrmResult
    sequential: SequentialResult | None
    guardrails: list[GuardrailResult]
    decision: Decision


def decide(
    srm: SrmResult, sequential: SequentialResult | None, guardrails: list[GuardrailResult], min_users_reached: bool,
    primary_metric: str,
) -> Decision:
    """SRM blocks everything; a failed guard-rail rolls back; then the sequential test decides once the minimum
    sample is reached; otherwise continue."""
    if srm.failed:
        counts = ", ".join(f"{arm} {n}" for arm, n in srm.observed.items())
        return Decision(CONTINUE, [f"sample ratio mismatch: users per arm {counts}, chi-square p = {srm.p_value:.2g} "
                                   "< 0.001; fix the assignment before trusting any result"], blocked=True)  # fmt: skip
    failed = [g for g in guardrails if not g.passed]
    if failed:
        return Decision(ROLLBACK, [f"guard-rail {g.metric}: {g.treatment:.4g} vs {g.control:.4g} "
                                   f"({g.relative_change:+.1%}) beyond tolerance" for g in failed])  # fmt: skip
    if not min_users_reached:
        return Decision(CONTINUE, ["minimum sample not reached yet"])
    if sequential is None:
        return Decision(CONTINUE, [f"{primary_metric} has no variance yet"])
    ci = f"[{sequential.ci_low:+.4g}, {sequential.ci_high:+.4g}]"
    if not sequential.rejects:
        return Decision(CONTINUE, [f"{primary_metric} difference {sequential.delta:+.4g}, confidence sequence {ci} "
                                   f"contains 0 (always-valid p = {sequential.p_value:.3g})"])  # fmt: skip
    action = PROMOTE if sequential.delta > 0 else ROLLBACK
    side = "better" if action == PROMOTE else "worse"
    return Decision(action, [f"challenger {side} on {primary_metric}: difference {sequential.delta:+.4g}, confidence "
                             f"sequence {ci} excludes 0 (always-valid p = {sequential.p_value:.3g})"])  # fmt: skip


def analyse(
    users: pd.DataFrame,
    *,
    control: str,
    treatment: str,
    shares: dict[str, float],
    primary_metric: str = "ctr",
    tau: float = 0.01,
    alpha: float = 0.05,
    min_users_per_arm: int = 100,
    guardrails: list[Guardrail] | None = None,
    guardrail_values: dict[str, dict[str, float]] | None = None,
    previous_p: float = 1.0,
    srm_threshold: float = 0.001,
) -> OnlineAnalysis:
    """One look at an experiment from its per-user table. `previous_p` carries the always-valid p-value between looks."""
    arms = arm_stats(users, list(shares))
    srm = srm_test({arm: s.users for arm, s in arms.items()}, shares, threshold=srm_threshold)
    a, b = arms[control].metric(primary_metric), arms[treatment].metric(primary_metric)
    variance = a.variance + b.variance
    sequential = (msprt(b.value - a.value, variance, tau=tau, alpha=alpha, previous_p=previous_p)
                  if math.isfinite(variance) and variance > 0 else None)  # fmt: skip
    values = guardrail_values or {}
    rails = check_guardrails(values.get(control, {}), values.get(treatment, {}), guardrails or [])
    reached = min(arms[control].users, arms[treatment].users) >= min_users_per_arm
    decision = decide(srm, sequential, rails, reached, primary_metric)
    return OnlineAnalysis(control, treatment, primary_metric, arms, srm, sequential, rails, decision)
