"""A/B statistics, replay simulation, decision rule and report rendering on hand-built per-user tables."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from recsys_core.experiments import assignment, offline, reports, statistics


def test_bootstrap_ci_is_seeded_and_matches_normal_theory():
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 1.0, size=2000)
    first = statistics.bootstrap_mean_ci(x, n_boot=2000, seed=7)
    assert first == statistics.bootstrap_mean_ci(x, n_boot=2000, seed=7)
    assert first[0] < x.mean() < first[1]
    assert first[1] - first[0] == pytest.approx(2 * 1.96 * x.std(ddof=1) / math.sqrt(x.size), rel=0.1)
    # Chunked resampling gives the same answer as one big draw would in distribution; small chunks still work.
    chunked = statistics.bootstrap_mean_ci(x, n_boot=500, seed=7, max_cells=3000)
    assert chunked[0] < x.mean() < chunked[1]


def test_cohens_d_and_sample_size_by_hand():
    assert statistics.cohens_d_paired(np.array([1.0, 2.0, 3.0])) == pytest.approx(2.0)
    assert statistics.cohens_d_paired(np.zeros(5)) == 0.0
    # d = 0.1 / 0.5 = 0.2 -> the textbook 393 per group at alpha 0.05, power 0.8.
    assert statistics.required_sample_size_per_arm(0.1, 0.5, 0.5) == 393
    assert math.isinf(statistics.required_sample_size_per_arm(0.0, 0.5, 0.5))


def test_compare_metric_uses_scipy_paired_tests():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=300)
    b = np.clip(a + rng.normal(0.05, 0.1, size=300), 0, 1)
    result = offline.compare_metric("ndcg@10", a, b, n_boot=500)
    assert result.lift == pytest.approx((b - a).mean())
    assert result.t_pvalue == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert result.ci_low < result.lift < result.ci_high
    assert result.relative_lift == pytest.approx(result.lift / a.mean())
    same = offline.compare_metric("ndcg@10", a, a.copy(), n_boot=100)
    assert (same.lift, same.t_pvalue, same.wilcoxon_pvalue, same.ci_low, same.ci_high) == (0.0, 1.0, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="equal-length"):
        offline.compare_metric("m", a, b[:-1])


def test_compare_per_user_aligns_on_common_users():
    champion = pd.DataFrame({"m": [0.0, 1.0, 0.5]}, index=pd.Index([3, 1, 2], name="user_id"))
    challenger = pd.DataFrame({"m": [1.0, 1.0, 9.0]}, index=pd.Index([1, 3, 7], name="user_id"))
    result = offline.compare_per_user(champion, challenger, ["m"], n_boot=50)["m"]
    assert result.n_users == 2 and result.lift == pytest.approx(0.5)
    with pytest.raises(ValueError, match="share no users"):
        offline.compare_per_user(champion, challenger.set_axis([8, 9, 10]), ["m"])
    with pytest.raises(ValueError, match="missing"):
        offline.compare_per_user(champion, challenger, ["ndcg@10"])


def test_hash_split_is_stable_and_balanced():
    users = np.arange(1, 20001)
    arms = assignment.assign_arms(users)
    assert np.array_equal(arms, assignment.assign_arms(users.copy()))
    assert 0.48 < arms.mean() < 0.52
    # The same user always lands in the same arm, whatever the batch it comes in.
    assert np.array_equal(assignment.assign_arms(users[::-1])[::-1], arms)
    assert not np.array_equal(assignment.assign_arms(users, salt="other"), arms)


def _lists(users: np.ndarray, items_per_user: dict[int, list[int]]) -> pd.DataFrame:
    rows = [(u, item, rank + 1) for u in users for rank, item in enumerate(items_per_user[int(u)])]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rank"])


@pytest.fixture
def good_and_bad() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """200 users with 3 held-out items each; the good model ranks 2 of them in its top 10, the bad one none."""
    users = np.arange(200)
    held_out = pd.DataFrame([(u, 1000 + 3 * u + j) for u in users for j in range(3)], columns=["user_id", "item_id"])
    good = _lists(users, {int(u): [1000 + 3 * u, 1000 + 3 * u + 1, *range(10, 18)] for u in users})
    bad = _lists(users, {int(u): list(range(10, 20)) for u in users})
    return held_out, good, bad


def test_replay_counts_clicks_per_arm(good_and_bad):
    held_out, good, bad = good_and_bad
    result = offline.replay_simulation(bad, good, held_out, k=10, n_boot=200)
    arms = assignment.assign_arms(np.arange(200))
    assert result.challenger.n_users == int(arms.sum())
    assert result.champion.n_users == 200 - int(arms.sum())
    assert result.challenger.clicks == 2 * result.challenger.n_users
    assert result.champion.clicks == 0
    assert result.challenger.ctr == pytest.approx(0.2)
    assert result.ctr_lift == pytest.approx(0.2)


def test_decision_rule_promotes_better_holds_worse(good_and_bad):
    held_out, good, bad = good_and_bad
    better = offline.build_ab_report(good, held_out, champion_recs=bad, challenger_label="v2", champion_label="v1", n_boot=300)
    assert better.decision.action == offline.PROMOTE and not better.decision.worse_beyond_tolerance
    worse = offline.build_ab_report(bad, held_out, champion_recs=good, challenger_label="v2", champion_label="v1", n_boot=300)
    assert worse.decision.action == offline.HOLD and worse.decision.worse_beyond_tolerance
    same = offline.build_ab_report(good, held_out, champion_recs=good, challenger_label="v2", champion_label="v1", n_boot=300)
    assert same.decision.action == offline.HOLD and not same.decision.worse_beyond_tolerance
    assert any("not above 0" in reason for reason in same.decision.reasons)
    first = offline.build_ab_report(bad, held_out, champion_recs=None, challenger_label="v1", champion_label=None)
    assert first.decision.action == offline.PROMOTE and "first model" in first.decision.reasons[0]


def test_guardrail_breach_holds_even_with_primary_lift():
    def comparison(metric: str, a: float, b: float, low: float, high: float) -> offline.PairedComparison:
        return offline.PairedComparison(metric, 100, a, b, b - a, (b - a) / a, low, high, 0.01, 0.01, 0.3, 500.0)

    rule = offline.DecisionRule(primary_metric="ndcg@10", guardrails={"recall@10": 0.05})
    comparisons = {
        "ndcg@10": comparison("ndcg@10", 0.30, 0.33, 0.01, 0.05),
        "recall@10": comparison("recall@10", 0.20, 0.18, -0.03, -0.01),
    }
    decision = offline.decide(comparisons, rule)
    assert decision.action == offline.HOLD and decision.worse_beyond_tolerance
    assert any("guard-rail recall@10 drops 10.0%" in reason for reason in decision.reasons)
    # The same drop within noise (CI crosses 0) still holds, but is not "worse beyond tolerance".
    comparisons["recall@10"] = comparison("recall@10", 0.20, 0.18, -0.05, 0.01)
    noisy = offline.decide(comparisons, rule)
    assert noisy.action == offline.HOLD and not noisy.worse_beyond_tolerance
    with pytest.raises(ValueError, match="hr@10"):
        offline.decide(comparisons, offline.DecisionRule(guardrails={"hr@10": 0.1}))


def test_reports_render_self_contained(good_and_bad):
    held_out, good, bad = good_and_bad
    report = offline.build_ab_report(good, held_out, champion_recs=bad, challenger_label="recsys-hybrid v2",
                                champion_label="recsys-hybrid v1", n_boot=200)
    markdown = reports.render_markdown(report)
    assert "**PROMOTE**" in markdown and "| ndcg@10 |" in markdown and "Replay simulation" in markdown
    page = reports.render_html(report)
    assert page.count("data:image/png;base64,") == 4
    assert not re.search(r"(src|href)=['\"]https?://", page)
    summary = report.to_dict()
    assert summary["decision"]["action"] == "promote" and summary["comparisons"]["ndcg@10"]["lift"] > 0
    first = offline.build_ab_report(bad, held_out, champion_recs=None, challenger_label="v1", champion_label=None)
    assert "none (first model)" in reports.render_html(first) and "PROMOTE" in reports.render_markdown(first)


def test_cli_writes_the_report(good_and_bad, tmp_path):
    from recsys_dagster.cli import main

    held_out, good, bad = good_and_bad
    paths = {name: tmp_path / f"{name}.parquet" for name in ("good", "bad", "held_out")}
    good.to_parquet(paths["good"]), bad.to_parquet(paths["bad"]), held_out.to_parquet(paths["held_out"])
    html, summary = tmp_path / "report.html", tmp_path / "report.json"
    args = ["ab", "report", "--held-out", str(paths["held_out"]), "--n-boot", "200", "--html", str(html), "--json", str(summary)]
    assert main([*args, "--challenger", str(paths["good"]), "--champion", str(paths["bad"])]) == 0
    assert "PROMOTE" in html.read_text()
    assert main([*args, "--challenger", str(paths["bad"]), "--champion", str(paths["good"])]) == 3
    assert '"action": "hold"' in summary.read_text()
