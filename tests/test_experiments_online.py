"""Online experiment statistics: hash assignment, click attribution, delta-method CIs, SRM, the mSPRT against an
independent numerical implementation, and the decision rule."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from recsys_core.experiments import assignment, attribution, online, sequential


def test_assignment_is_sticky_and_matches_shares_within_binomial_tolerance():
    users = np.arange(1, 200_001)
    shares = {"champion": 0.45, "challenger": 0.45}
    arms = assignment.assign_shares(users, "exp-1", shares)
    # Sticky: the same users in another order and in small batches (one per request) get the same arms.
    shuffled = np.random.default_rng(0).permutation(users)
    again = assignment.assign_shares(shuffled, "exp-1", shares)
    assert (pd.Series(again, index=shuffled).loc[users].to_numpy() == arms).all()
    assert [assignment.assign_shares(np.array([u]), "exp-1", shares)[0] for u in users[:50]] == list(arms[:50])
    # Pinned: the same on every machine, Python and numpy version (a restarted service must not reshuffle users).
    assert list(arms[:12]) == ["champion", "champion", "challenger", "champion", "", "", "", "challenger", "challenger",
                               "challenger", "challenger", "challenger"]  # fmt: skip
    for arm, share in [*shares.items(), (assignment.OUTSIDE, 0.10)]:
        count = int((arms == arm).sum())
        sd = math.sqrt(users.size * share * (1 - share))
        assert abs(count - users.size * share) < 4 * sd, (arm, count)
    # Another salt reshuffles users: about half of the champion users stay.
    other = assignment.assign_shares(users, "exp-2", shares)
    assert 0.40 < np.mean(other[arms == "champion"] == "champion") < 0.50


def test_assignment_refuses_shares_above_one():
    with pytest.raises(ValueError, match="sum to at most 1"):
        assignment.assign_shares(np.arange(5), "s", {"a": 0.7, "b": 0.4})


def _exposures() -> pd.DataFrame:
    # Request r1 to user 1 (arm A) at t=0 showing items 10, 11; r2 to user 2 (arm B) at t=100 showing 10, 12.
    return pd.DataFrame({
        "request_id": ["r1", "r1", "r2", "r2"], "user_id": [1, 1, 2, 2], "arm": ["A", "A", "B", "B"],
        "item_id": [10, 11, 10, 12], "rank": [1, 2, 1, 2], "timestamp": [0.0, 0.0, 100.0, 100.0],
    })  # fmt: skip


def test_attribution_edge_cases_are_counted_not_dropped():
    clicks = pd.DataFrame({
        "user_id":    [1,    1,    1,    2,    2,    3,    1],
        "item_id":    [10,   10,   11,   12,   10,   10,   99],
        "timestamp":  [5.0,  6.0,  5000, 150,  90,   10,   20],
        "request_id": ["r1", None, None, None, None, None, None],
    })  # fmt: skip
    out = attribution.attribute_clicks(_exposures(), clicks, window_s=3600)
    assert len(out) == len(clicks)
    assert list(out["status"]) == [
        "attributed",  # with request_id
        "duplicate",  # same item of the same exposure again, matched by the window
        "late",  # shown item, but 5000 s after the exposure
        "attributed",  # shown item within the window, no request_id
        "no_exposure",  # clicked before it was shown to that user
        "no_exposure",  # a user who was never exposed
        "no_exposure",  # an item that was never shown
    ]
    assert list(out["arm"].fillna("")) == ["A", "A", "A", "B", "", "", ""]
    assert attribution.status_counts(out) == {"attributed": 2, "duplicate": 1, "late": 1, "no_exposure": 3}
    users = online.user_table(_exposures(), out)
    assert users.set_index("user_id")[["exposures", "impressions", "clicks"]].to_dict("index") == {
        1: {"exposures": 1, "impressions": 2, "clicks": 1}, 2: {"exposures": 1, "impressions": 2, "clicks": 1}}


def test_attribution_names_missing_columns():
    with pytest.raises(ValueError, match=r"clicks lack column\(s\) \['timestamp'\]"):
        attribution.attribute_clicks(_exposures(), pd.DataFrame({"user_id": [1], "item_id": [10]}))


def test_user_table_refuses_a_user_in_two_arms():
    exposures = _exposures().assign(user_id=1)
    with pytest.raises(ValueError, match="more than one arm"):
        online.user_table(exposures, attribution.attribute_clicks(exposures, pd.DataFrame(columns=["user_id", "item_id", "timestamp"])))


def test_ctr_delta_method_ci_matches_a_user_level_bootstrap():
    rng = np.random.default_rng(3)
    impressions = rng.integers(1, 40, 3000).astype(float)
    clicks = rng.binomial(impressions.astype(int), rng.beta(1, 15, 3000)).astype(float)
    est = online.ratio_estimate(clicks, impressions)
    idx = rng.integers(0, 3000, size=(2000, 3000))
    boot = clicks[idx].sum(axis=1) / impressions[idx].sum(axis=1)
    assert est.value == pytest.approx(clicks.sum() / impressions.sum())
    assert math.sqrt(est.variance) == pytest.approx(boot.std(), rel=0.08)
    # Over impressions (wrong for correlated clicks) the CI would be narrower than over users here.
    naive = est.value * (1 - est.value) / impressions.sum()
    assert est.variance > 1.2 * naive


def _reference_lr(delta: float, variance: float, tau: float) -> float:
    """Lambda by numerical integration of the likelihood ratio over the N(0, tau^2) mixing density."""
    sd = math.sqrt(variance)

    def integrand(theta: float) -> float:
        return stats.norm.pdf(delta, theta, sd) / stats.norm.pdf(delta, 0, sd) * stats.norm.pdf(theta, 0, tau)

    return integrate.quad(integrand, -12 * tau, 12 * tau, points=[0.0, delta], limit=200)[0]


@pytest.mark.parametrize("delta,variance,tau", [(0.0, 1e-4, 0.01), (0.01, 4e-5, 0.01), (-0.02, 1e-4, 0.005), (0.3, 0.01, 0.2)])
def test_msprt_matches_numerical_integration_and_its_boundary(delta, variance, tau):
    assert sequential.mixture_likelihood_ratio(delta, variance, tau) == pytest.approx(_reference_lr(delta, variance, tau), rel=1e-6)
    # The confidence sequence's edge is exactly where Lambda crosses 1/alpha.
    half = sequential.confidence_half_width(variance, tau, 0.05)
    assert _reference_lr(half, variance, tau) == pytest.approx(20.0, rel=1e-6)


def test_msprt_p_value_is_a_running_minimum():
    first = sequential.msprt(0.05, 1e-4, tau=0.01)
    assert first.rejects and first.p_value < 0.05
    later = sequential.msprt(0.0, 1e-4, tau=0.01, previous_p=first.p_value)
    assert later.p_value == first.p_value and later.rejects
    assert not sequential.msprt(0.0, 1e-4, tau=0.01).rejects


def test_srm_detects_a_45_55_split_and_blocks_the_decision():
    shares = {"A": 0.5, "B": 0.5}
    assert not online.srm_test({"A": 5020, "B": 4980}, shares).failed
    srm = online.srm_test({"A": 4500, "B": 5500}, shares)
    assert srm.failed and srm.p_value < 1e-20
    strong = sequential.msprt(0.05, 1e-4, tau=0.01)
    decision = online.decide(srm, strong, [], True, "ctr")
    assert decision.blocked and decision.action == online.CONTINUE and "sample ratio mismatch" in decision.reasons[0]


def test_decision_rules():
    ok = online.srm_test({"A": 100, "B": 100}, {"A": 0.5, "B": 0.5})
    better, worse = sequential.msprt(0.05, 1e-4, tau=0.01), sequential.msprt(-0.05, 1e-4, tau=0.01)
    assert online.decide(ok, better, [], True, "ctr").action == online.PROMOTE
    assert online.decide(ok, worse, [], True, "ctr").action == online.ROLLBACK
    assert online.decide(ok, better, [], False, "ctr").action == online.CONTINUE
    rails = online.check_guardrails({"latency_p99_ms": 40.0, "coverage": 0.3}, {"latency_p99_ms": 50.0, "coverage": 0.29},
                                    [online.Guardrail("latency_p99_ms", 0.10), online.Guardrail("coverage", 0.10, True)])
    assert [r.passed for r in rails] == [False, True]
    decision = online.decide(ok, better, rails, True, "ctr")
    assert decision.action == online.ROLLBACK and "latency_p99_ms" in decision.reasons[0]
