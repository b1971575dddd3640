"""A/B experiments, offline and online.

Offline (the gate that admits a challenger into an online test): `statistics` (bootstrap, effect sizes, power),
`offline` (paired comparison, replay simulation, decision rule), `reports` (Markdown/HTML), `registry` (MLflow
champion alias), `ab_report_command` (`recsys ab report`).
Online: `assignment` (salted hash split), `attribution` (clicks to exposures), `online` (per-arm metrics over users,
SRM, guard-rails, decision), `sequential` (mSPRT), `definitions` (+ `command`: `recsys experiments`),
`online_report`, `records` (where exposures and clicks come from), `simulation` (+ `simulate_command`: `recsys simulate`).
"""
