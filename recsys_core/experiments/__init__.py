"""A/B experiments: offline champion-vs-challenger comparison (the gate into an online test) and its reports.

Modules by concern: `statistics` (bootstrap, effect sizes, power), `assignment` (salted hash split), `offline`
(paired comparison, replay simulation, decision rule), `reports` (Markdown/HTML), `registry` (MLflow champion alias),
`ab_report_command` (`recsys ab report`).
"""
