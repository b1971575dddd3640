"""`make demo`: materialise the asset graph on the embedded default data, then run the online A/B loop: a second,
deliberately weaker model is trained, both are served in an experiment by the real service, simulated users request
and click for a while, and `online_ab_report` reads their traffic from the event store and decides.

The console gets a short summary with progress; Dagster's and the libraries' logs (and the service's) go to a log
file the demo names, so a reader sees what happened rather than pages of DEBUG lines.
"""

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from dagster import AssetKey, DagsterInstance, MetadataValue

from recsys_core.paths import recsys_home
from recsys_core.serving.process import ServiceProcess

# Metadata worth a line in the summary, in this order, when an asset reports it.
SUMMARY_KEYS = (
    "rows", "dagster/row_count", "rejected_rows", "users", "items", "n_items", "items_encoded", "items_reused", "dim",
    "best_epoch", "n_parameters", "train_seconds", "registered_version", "rmse", "ndcg@10", "map@10", "recall@10",
    "decision",
)  # fmt: skip
# The challenger of the online experiment: one epoch and no collaborative prior, clearly worse for the simulated users.
WEAKER = {"ops": {"trained_model": {"config": {"epochs": 1, "prior_dim": 0}}}}
CHALLENGER = [AssetKey("trained_model"), AssetKey("onnx_model"), AssetKey("ab_report")]  # the rest is reused from [1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job", default="full_pipeline", help="job to run (default: every asset)")
    parser.add_argument("--online-seconds", type=float, default=45.0,
                        help="simulated traffic in the online experiment; 0 skips the online loop")
    parser.add_argument("--rate", type=float, default=40.0, help="simulated requests per second")


def _value(entry: MetadataValue) -> str:
    value = getattr(entry, "value", entry)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary(instance: DagsterInstance, keys: list[AssetKey]) -> list[str]:
    lines = []
    for key in keys:
        event = instance.get_latest_materialization_event(key)
        if event is None or event.asset_materialization is None:
            lines.append(f"  {key.to_user_string():<24} not materialised")
            continue
        metadata = event.asset_materialization.metadata
        shown = [f"{name}={_value(metadata[name])}" for name in SUMMARY_KEYS if name in metadata]
        lines.append(f"  {key.to_user_string():<24} " + ", ".join(shown))
    return lines


class Console:
    """Progress lines on the real stdout while everything else (fds 1 and 2, so C++ warnings too) goes to `log_path`."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.out = sys.stdout

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    @contextmanager
    def quiet(self) -> Iterator[None]:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        self.out = os.fdopen(os.dup(saved[0]), "w")
        with self.log_path.open("a") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
                self.out.close()
                self.out = sys.stdout

    def stage(self, title: str, work: Callable[[], object]) -> object:
        self.say(f"\n{title} ...")
        started = time.perf_counter()
        with self.quiet():
            result = work()
        self.say(f"  done in {time.perf_counter() - started:.0f}s")
        return result


def run(args: argparse.Namespace) -> int:
    if "DAGSTER_HOME" not in os.environ:
        raise SystemExit("set DAGSTER_HOME (make demo does) so the runs show up in the Dagster UI afterwards")
    log_path = recsys_home() / "logs" / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    console = Console(log_path)
    console.say(f"recsys demo: Dagster, library and service logs go to {log_path}")
    started = time.perf_counter()
    with console.quiet():
        from recsys_dagster.definitions import defs
    with DagsterInstance.get() as instance:
        job = defs.resolve_job_def(args.job)
        result = console.stage(f"[1] job {args.job!r}: ingest, validate, train, export, evaluate, offline A/B",
                               lambda: job.execute_in_process(instance=instance, raise_on_error=False))  # fmt: skip
        keys = [key for key in defs.resolve_asset_graph().toposorted_asset_keys if key in job.asset_layer.selected_asset_keys]
        console.say(f"  job {args.job!r} {'succeeded' if result.success else 'FAILED'} (run {result.run_id})")
        console.say("\n".join(summary(instance, keys)))
        ok = result.success
        if ok and args.job == "full_pipeline" and args.online_seconds > 0:
            ok = online_loop(console, defs, instance, args)
    console.say(f"\nrecsys demo: {'finished' if ok else 'FAILED'} in {time.perf_counter() - started:.0f}s; logs: {log_path}")
    console.say("Browse the lineage, metadata and checks: make ui  (http://127.0.0.1:3000)")
    console.say("MLflow runs and the model registry:       make mlflow-ui  (http://127.0.0.1:5000)")
    return 0 if ok else 1


def online_loop(console: Console, defs, instance: DagsterInstance, args: argparse.Namespace) -> bool:  # noqa: ANN001
    """A weaker challenger, both models in an experiment behind the real service, simulated traffic, the online report."""
    trained = console.stage("[2] challenger: trained_model, onnx_model, ab_report again, deliberately weaker (1 epoch, no prior)",
                            lambda: defs.resolve_job_def("train_and_evaluate").execute_in_process(
                                instance=instance, run_config=WEAKER, asset_selection=CHALLENGER, raise_on_error=False))  # fmt: skip
    if not trained.is_node_success("onnx_model"):  # ab_report's blocking check may fail: the gate holding it back
        console.say(f"  FAILED (run {trained.run_id})")
        return False
    gate = "passed" if trained.success else "held it back (blocking check: worse beyond tolerance)"
    console.say(f"  offline gate (ab_report) {gate}; the demo runs it online anyway, to show a regression caught")
    return experiment(console, defs, instance, args)


def experiment(console: Console, defs, instance: DagsterInstance, args: argparse.Namespace) -> bool:  # noqa: ANN001
    """Champion and challenger in an experiment behind the real service, simulated traffic, then the online report."""
    from recsys_dagster.assets.online_ab import experiments

    name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    service = ServiceProcess(["--registry-alias", "champion", "--providers", "cpu", "--reload-interval", "2"], log_path=console.log_path)
    console.say("\n[3] serving champion and challenger: recsys serve on 127.0.0.1 ...")
    with console.quiet():
        service.start()
    try:
        ran = traffic(console, service, name, args)
    finally:
        service.stop()  # flushes the exposure log into the event store
    if not ran:
        return False
    console.say("  clicks posted to POST /events; the service stopped (its exposure log flushed)")

    instance.add_dynamic_partitions(experiments.name, [name])
    report = console.stage("\n[5] online_ab_report from the event store (mSPRT, SRM, guard-rails)",
                           lambda: defs.resolve_job_def("online_ab_evaluation").execute_in_process(
                               instance=instance, partition_key=name, raise_on_error=False))  # fmt: skip
    event = instance.get_latest_materialization_event(AssetKey("online_ab_report"))
    if event is None or event.asset_materialization is None or event.asset_materialization.partition != name:
        console.say(f"  FAILED (run {report.run_id}); see {console.log_path}")
        return False
    metadata = event.asset_materialization.metadata
    console.say(_value(metadata["summary"]))
    console.say(f"\n  applied: {_value(metadata['applied'])}\n  HTML report: {_value(metadata['report_html'])}")
    return True


def traffic(console: Console, service: ServiceProcess, name: str, args: argparse.Namespace) -> bool:
    """Creates the experiment through the admin endpoint, runs the simulated users in chunks (a progress line each),
    then posts their clicks; False when the experiment could not be created."""
    from recsys_core.experiments.simulate_command import ServiceSink, simulate_http
    from recsys_core.experiments.simulation import SimulatedUsers

    sessions: list[tuple[pd.DataFrame, pd.DataFrame]] = []
    with service.client(service.admin_key) as admin, service.client(timeout_s=10) as client:
        created = admin.put(f"/experiments/{name}", json={"arms": {"control": "alias:champion", "treatment": "alias:challenger"},
                                                         "min_users_per_arm": 100})  # fmt: skip
        if created.status_code != 201:
            console.say(f"  could not create the experiment: {created.status_code} {created.text}")
            return False
        arms = created.json()["arms"]
        console.say(f"  {service.url}: experiment {name!r}, control {arms['control']} vs treatment {arms['treatment']}, 50/50")
        console.say(f"\n[4] {args.online_seconds:.0f}s of simulated users at {args.rate:.0f} requests/s (clicks by their true tastes)")
        simulated, chunk = SimulatedUsers(), 15.0
        for i in range(max(1, round(args.online_seconds / chunk))):
            exposures, clicks, counters = simulate_http(client, simulated, rate=args.rate, duration_s=chunk, seed=i)
            sessions.append((exposures, clicks))
            shown = pd.concat([e for e, _ in sessions])
            clicked = pd.concat([c for _, c in sessions]).merge(shown[["request_id", "arm"]].drop_duplicates(), on="request_id")
            ctr = "  ".join(f"{arm} CTR {len(clicked[clicked['arm'] == arm]) / max(len(shown[shown['arm'] == arm]), 1):.3f}"
                            for arm in ("control", "treatment"))  # fmt: skip
            console.say(f"  {(i + 1) * chunk:.0f}s: {len(shown['request_id'].unique())} responses to "
                        f"{shown['user_id'].nunique()} users, {counters['errors']} errors; {ctr}")  # fmt: skip
        ServiceSink(client, service.write_key).write(pd.concat([e for e, _ in sessions]), pd.concat([c for _, c in sessions]))
    return True
