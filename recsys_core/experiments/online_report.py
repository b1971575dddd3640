"""The online A/B report of one experiment from its exposure and click records: per-arm tables, SRM, the sequential
test's cumulative lift with its confidence sequence over time, guard-rails and the decision, as Markdown (asset
metadata) and self-contained HTML (an MLflow artefact)."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys_core.experiments import attribution, online
from recsys_core.experiments.definitions import ExperimentDefinition
from recsys_core.experiments.reports import CSS, html_table, markdown_table
from recsys_core.figures import png_base64

CITATION = ("mSPRT with a normal mixture: Johari, Koomen, Pekelis, Walsh, \"Always Valid Inference: Continuous "
            "Monitoring of A/B Tests\", Operations Research 70(3), 2022")  # fmt: skip


@dataclass
class OnlineReport:
    definition: ExperimentDefinition
    analysis: online.OnlineAnalysis
    timeline: pd.DataFrame  # one row per look: until, users, delta, ci_low, ci_high, p_value
    click_status: dict[str, int]


def build_online_report(
    definition: ExperimentDefinition, exposures: pd.DataFrame, clicks: pd.DataFrame, *, looks: int = 20,
    catalogue_size: int | None = None,
) -> OnlineReport:
    """Attributes the clicks, then analyses the experiment as it stood at `looks` evenly spaced times (carrying the
    always-valid p-value from look to look) and at the end, with guard-rails from the exposures."""
    attributed = attribution.attribute_clicks(exposures, clicks, window_s=definition.attribution_window_s)
    exposures = exposures[exposures[attribution.ARM].isin(list(definition.arms))]
    if exposures.empty:
        raise ValueError(f"experiment {definition.name!r}: no exposures in arms {list(definition.arms)}")
    start, end = float(exposures[attribution.TIMESTAMP].min()), float(exposures[attribution.TIMESTAMP].max())
    if len(clicks):  # the last look counts the clicks that came after the last exposure
        end = max(end, float(clicks[attribution.TIMESTAMP].max()))
    rails = {arm: online.guardrail_metrics(exposures, arm, catalogue_size) for arm in definition.arms}
    previous_p, rows = 1.0, []
    for until in np.linspace(start, end, looks + 1)[1:]:
        shown = exposures[exposures[attribution.TIMESTAMP] <= until]
        users = online.user_table(shown, attributed[attributed[attribution.TIMESTAMP] <= until])
        analysis = definition.analyse(users, previous_p=previous_p, guardrail_values=rails)
        test = analysis.sequential
        previous_p = test.p_value if test else previous_p
        rows.append({"until": until, "users": len(users), "delta": test.delta if test else math.nan,
                     "ci_low": test.ci_low if test else math.nan, "ci_high": test.ci_high if test else math.nan,
                     "p_value": previous_p})  # fmt: skip
    return OnlineReport(definition, analysis, pd.DataFrame(rows), attribution.status_counts(attributed))


def arm_rows(report: OnlineReport) -> list[dict[str, str]]:
    rows = []
    for arm, s in report.analysis.arms.items():
        ctr_low, ctr_high = s.ctr.ci()
        cpu_low, cpu_high = s.clicks_per_user.ci()
        rows.append({
            "arm": arm, "model": report.definition.arms[arm], "users": str(s.users), "exposures": str(s.exposures),
            "impressions": str(s.impressions), "clicks": str(s.clicks), "CTR": f"{s.ctr.value:.4f}",
            "CTR 95% CI": f"[{ctr_low:.4f}, {ctr_high:.4f}]", "clicks/user": f"{s.clicks_per_user.value:.3f}",
            "clicks/user 95% CI": f"[{cpu_low:.3f}, {cpu_high:.3f}]",
        })  # fmt: skip
    return rows


def guardrail_rows(report: OnlineReport) -> list[dict[str, str]]:
    return [{"guard-rail": g.metric, "control": f"{g.control:.4g}", "treatment": f"{g.treatment:.4g}",
             "change": f"{g.relative_change:+.1%}", "passed": str(g.passed)} for g in report.analysis.guardrails]  # fmt: skip


def _summary(report: OnlineReport) -> list[str]:
    a, d = report.analysis, report.definition
    srm = a.srm
    test = a.sequential
    lines = [
        f"Experiment `{d.name}`: {d.control} ({d.arms[d.control]}) vs {d.treatment} ({d.arms[d.treatment]}), "
        f"primary metric {d.primary_metric}, alpha {d.alpha}, minimum {d.min_users_per_arm} users per arm.",
        f"SRM: users per arm {srm.observed}, expected shares {srm.expected_share}, chi-square p = {srm.p_value:.3g}"
        f" ({'FAILED: blocks the decision' if srm.failed else 'ok'}).",
        f"Clicks: {report.click_status}.",
    ]
    if test:
        lines.append(f"Sequential test: difference {test.delta:+.4g}, 95% confidence sequence [{test.ci_low:+.4g}, "
                     f"{test.ci_high:+.4g}], always-valid p = {test.p_value:.3g}. {CITATION}.")  # fmt: skip
    return lines


def render_online_markdown(report: OnlineReport) -> str:
    decision = report.analysis.decision
    lines = [f"## Online A/B decision: **{decision.action.upper()}**", *[f"- {r}" for r in decision.reasons], "",
             *_summary(report), "", "### Per arm (CIs over users)", markdown_table(arm_rows(report))]  # fmt: skip
    if report.analysis.guardrails:
        lines += ["", "### Guard-rails", markdown_table(guardrail_rows(report))]
    return "\n".join(lines)


def lift_figure(report: OnlineReport) -> str:
    """Base64 PNG: the cumulative difference and its confidence sequence at every look."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    t = report.timeline
    minutes = (t["until"] - t["until"].iloc[0]) / 60
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    ax.fill_between(minutes, t["ci_low"], t["ci_high"], color="#2f6fb0", alpha=0.2, label="95% confidence sequence")
    ax.plot(minutes, t["delta"], color="#2f6fb0", marker="o", markersize=3, label="cumulative difference")
    ax.axhline(0, color="#444", linewidth=0.8)
    ax.set_xlabel("minutes since the first look")
    ax.set_ylabel(f"{report.definition.primary_metric}: treatment - control")
    ax.legend(loc="best", fontsize=8)
    data = png_base64(fig, dpi=110)
    plt.close(fig)
    return data


def render_online_html(report: OnlineReport) -> str:
    d, decision = report.definition, report.analysis.decision
    css_class = {online.PROMOTE: "promote"}.get(decision.action, "hold")
    timeline = [{"look": str(i + 1), "users": str(r.users), "difference": f"{r.delta:+.4g}",
                 "confidence sequence": f"[{r.ci_low:+.4g}, {r.ci_high:+.4g}]", "always-valid p": f"{r.p_value:.3g}"}
                for i, r in enumerate(report.timeline.itertuples())]  # fmt: skip
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Online A/B: {html.escape(d.name)}</title>"
        f"<style>{CSS}</style></head><body><h1>Online A/B report: {html.escape(d.name)}</h1>",
        f"<p><span class='verdict {css_class}'>{decision.action.upper()}</span></p>",
        "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in decision.reasons) + "</ul>",
        "".join(f"<p class='meta'>{html.escape(line)}</p>" for line in _summary(report)),
        "<h2>Per arm (CIs over users; CTR by the delta method)</h2>", html_table(arm_rows(report)),
        "<h2>Guard-rails</h2>", html_table(guardrail_rows(report)),
        "<h2>Cumulative lift with its confidence sequence</h2>",
        f"<img alt='cumulative lift' src='data:image/png;base64,{lift_figure(report)}'>",
        "<h2>Looks</h2>", html_table(timeline), "</body></html>",
    ]  # fmt: skip
    return "\n".join(parts)
