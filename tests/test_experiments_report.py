"""The online report from exposure and click records of simulated traffic with a known winner."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_core.experiments import online
from recsys_core.experiments.definitions import ExperimentDefinition
from recsys_core.experiments.online_report import build_online_report, render_online_html, render_online_markdown
from recsys_core.experiments.simulation import SimulatedUsers, simulate_records
from recsys_core.synthetic import SyntheticConfig


def test_report_promotes_the_better_arm_and_renders_the_confidence_sequence():
    simulated = SimulatedUsers(SyntheticConfig(n_users=200, n_items=300, n_ratings=4000, seed=3))
    definition = ExperimentDefinition("report-test", {"champion": "alias:champion", "challenger": "alias:challenger"},
                                      {"champion": 0.5, "challenger": 0.5}, min_users_per_arm=50)  # fmt: skip
    lists = {"champion": simulated.ranked_lists(10, noise=0.6, seed=1), "challenger": simulated.ranked_lists(10)}
    exposures, clicks = simulate_records(simulated, lists, definition.shares, definition.effective_salt, visitors=1000,
                                         requests=3000, seed=5, start_time=1_700_000_000.0)  # fmt: skip
    exposures["latency_ms"] = 20.0
    # Clicks the report must count without crediting: one with no exposure, one a day late.
    extra = pd.DataFrame({"user_id": [999_999, exposures.user_id.iloc[0]], "item_id": [1, exposures.item_id.iloc[0]],
                          "timestamp": [1_700_000_000.0, exposures.timestamp.iloc[0] + 86_400], "request_id": [None, None]})
    report = build_online_report(definition, exposures, pd.concat([clicks, extra], ignore_index=True), looks=12,
                                 catalogue_size=300)  # fmt: skip
    assert report.analysis.decision.action == online.PROMOTE, report.analysis.decision.reasons
    assert report.click_status["no_exposure"] == 1 and report.click_status["late"] == 1
    assert report.click_status["attributed"] == len(clicks)
    champion, challenger = report.analysis.arms["champion"], report.analysis.arms["challenger"]
    assert champion.users + challenger.users == exposures.user_id.nunique()
    assert challenger.ctr.value > champion.ctr.value
    assert len(report.timeline) == 12 and report.timeline["users"].is_monotonic_increasing
    assert (report.timeline["ci_low"] <= report.timeline["delta"]).all()
    assert np.all(np.diff(report.timeline["p_value"]) <= 0)  # always-valid p-values only go down
    assert {g.metric for g in report.analysis.guardrails} == {"latency_p99_ms", "coverage"}
    markdown = render_online_markdown(report)
    assert "**PROMOTE**" in markdown and "Always Valid Inference" in markdown and "| challenger |" in markdown
    page = render_online_html(report)
    assert page.count("data:image/png;base64,") == 1 and "confidence sequence" in page
