"""The offline A/B report rendered: Markdown for the Dagster UI, self-contained HTML with embedded plots."""

from __future__ import annotations

import html

import numpy as np

from recsys_core.experiments.offline import ABReport, ReplayResult
from recsys_core.figures import png_base64


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


def markdown_table(rows: list[dict[str, str]]) -> str:
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
        lines += ["", "### Paired offline comparison (challenger - champion)", markdown_table(comparison_rows(report))]
    if report.replay:
        r = report.replay
        lines += [
            "",
            f"### Replay simulation (50/50 hash split, salt `{r.salt}`)",
            markdown_table(replay_rows(r)),
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


CSS = """
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


def html_table(rows: list[dict[str, str]]) -> str:
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
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
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
        parts += ["<h2>Paired offline comparison (challenger &minus; champion, same users)</h2>", html_table(comparison_rows(report)),
                  "<p class='meta'>CI: percentile bootstrap over users. Users/arm needed: two-sided test at "
                  "&alpha; = 0.05 and power 0.8 for the observed lift.</p>"]
    else:
        parts += ["<h2>Challenger metrics</h2>",
                  html_table([{"metric": k, "value": _fmt(v)} for k, v in report.challenger_metrics.items()])]
    if report.replay:
        r = report.replay
        parts += [f"<h2>Replay simulation (50/50 hash split, salt <code>{html.escape(r.salt)}</code>)</h2>",
                  html_table(replay_rows(r)), f"<p>CTR lift {r.ctr_lift:+.4f}, Welch t-test p = {_fmt(r.p_value, 3)}</p>"]
    figures = report_figures(report)
    if figures:
        parts.append("<h2>Plots</h2><div class='plots'>")
        parts += [f"<figure><figcaption>{html.escape(name)}</figcaption><img alt='{html.escape(name)}' "
                  f"src='data:image/png;base64,{data}'></figure>" for name, data in figures.items()]
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
