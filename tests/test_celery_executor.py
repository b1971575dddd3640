"""full_pipeline on two real Celery workers (redis-server broker), with one worker process killed mid-run.

The processes are the production ones on 127.0.0.1: a gRPC code server, the daemon (it runs Dagster's run retries),
two `dagster-celery worker start` workers on the Redis broker, and the run launched by `dagster job launch`. All
share DAGSTER_HOME and RECSYS_HOME, which is the shared-filesystem case: every step reads its inputs from the files
another worker wrote.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from servers import Processes, free_port

from recsys_dagster.executors import CELERY_YAML, executor_for

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKERS = ("w1", "w2")
KILLED_STEP = "trained_model"
# Smallest data on which every stage still runs for real; two epochs keep training short on CI's 2 cores.
RUN_CONFIG = {
    "ops": {
        "trained_model": {"config": {"epochs": 2}},
        **{op: {"config": {"data_docs": False}} for op in ("validate_item_catalogue", "validate_rating_log")},
    }
}


def test_executor_follows_the_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert executor_for("multiprocess").name == "multi_or_in_process_executor"
    celery = executor_for("celery")
    assert celery.name == "recsys_celery"
    assert yaml.safe_load(CELERY_YAML.read_text())["execution"]["config"]["broker"] == {"env": "RECSYS_CELERY_BROKER"}
    monkeypatch.setenv("RECSYS_EXECUTOR", "kubernetes")
    with pytest.raises(ValueError, match="RECSYS_EXECUTOR='kubernetes'"):
        executor_for()


def step_workers(instance: DagsterInstance, run_id: str) -> dict[str, str]:
    """Step key -> the Celery worker (node name) that executed it, from the run's engine events."""
    found = {}
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        metadata = record.dagster_event.engine_event_data.metadata
        if "Celery worker" in metadata:
            found[record.step_key] = metadata["Celery worker"].value.split("@")[0]
    return found


def full_pipeline_steps() -> list[str]:
    from recsys_dagster.definitions import defs

    return list(defs.resolve_job_def("full_pipeline").graph.node_dict)


def wait_for(condition, timeout: float, what: str, processes: Processes):
    deadline = time.monotonic() + timeout
    while not (exited := processes.exited()) and time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    logs = "\n".join(f"--- {name}\n{processes.log(name)}" for name in processes.started)
    raise TimeoutError(f"{what} not seen within {timeout}s (exited: {exited})\n{logs}")


def kill_pool_process(processes: Processes, worker: str) -> None:
    """SIGKILL the pool process executing the worker's task (what an OOM kill does); Celery reports WorkerLostError."""
    celery_main = psutil.Process(processes.started[worker].pid).children()[0]
    (pool,) = celery_main.children()
    pool.kill()


@pytest.mark.slow
def test_full_pipeline_on_two_celery_workers_survives_a_killed_worker(redis_server, tmp_path: Path) -> None:
    home, recsys_home = tmp_path / "dagster_home", tmp_path / "recsys_home"
    home.mkdir()
    # The local SQLite instance with the production run retries (the daemon re-executes a run whose worker died).
    retries = yaml.safe_load((REPO / "dagster.prod.yaml").read_text())["run_retries"]
    instance_yaml = {**yaml.safe_load((REPO / "dagster.yaml").read_text()), "run_retries": retries}
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    DagsterInstance.from_config(str(home)).dispose()  # create the SQLite schemas once, before the processes race to
    port = free_port()
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": {"host": "127.0.0.1", "port": port, "location_name": "recsys"}}]}))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(RUN_CONFIG))
    env = {**os.environ, "DAGSTER_HOME": str(home), "RECSYS_HOME": str(recsys_home), "RECSYS_EXECUTOR": "celery",
           "RECSYS_CELERY_BROKER": redis_server.url, "RECSYS_SYNTHETIC_RATINGS": "2000", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    processes = Processes(tmp_path, env, REPO)
    try:
        processes.start("code_server", [str(BIN / "dagster"), "api", "grpc", "-m", "recsys_dagster.definitions", "-h", "127.0.0.1", "-p", str(port)])
        for name in WORKERS:
            processes.start(name, [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(CELERY_YAML),
                                   "-n", name, "--", "--concurrency=1"])  # fmt: skip
        processes.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)])
        health = [str(BIN / "dagster"), "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(port)]
        wait_for(lambda: subprocess.run(health, env=env, capture_output=True).returncode == 0, 300, "the code server", processes)
        launch = [str(BIN / "dagster"), "job", "launch", "-w", str(workspace), "-j", "full_pipeline", "-c", str(tmp_path / "run.yaml")]
        subprocess.run(launch, cwd=REPO, env=env, capture_output=True, check=True)
        with DagsterInstance.from_config(str(home)) as instance:
            (first,) = instance.get_runs()
            killed_on = wait_for(lambda: step_workers(instance, first.run_id).get(KILLED_STEP), 600, f"{KILLED_STEP} started", processes)
            kill_pool_process(processes, killed_on)

            def retry_finished():
                retries = instance.get_runs(RunsFilter(tags={"dagster/parent_run_id": first.run_id}))
                return retries and retries[0].is_finished and retries[0]

            retry = wait_for(retry_finished, 600, "the retry run finishing", processes)
            first = instance.get_run_by_id(first.run_id)
            failure = instance.all_logs(first.run_id, of_type=DagsterEventType.RUN_FAILURE)
            finished_first = {e.step_key for e in instance.all_logs(first.run_id, of_type=DagsterEventType.STEP_SUCCESS)}
            ran_first, ran_retry = step_workers(instance, first.run_id), step_workers(instance, retry.run_id)
    finally:
        processes.stop()
        shutil.rmtree(recsys_home, ignore_errors=True)

    assert first.status == DagsterRunStatus.FAILURE
    assert "WorkerLostError" in str(failure[0].dagster_event.event_specific_data.error)
    assert retry.tags["dagster/retry_number"] == "1"  # launched by the daemon's run retries, not by this test
    assert retry.status == DagsterRunStatus.SUCCESS, processes.log("daemon")
    # Both workers ran steps of the first run. The retry ran the killed step and the steps after it, and no step the
    # first run had finished: those outputs were read from the shared asset storage. Together they ran every step.
    assert set(ran_first.values()) == set(WORKERS), ran_first
    assert KILLED_STEP in ran_retry and KILLED_STEP not in finished_first
    assert finished_first and not finished_first & set(ran_retry), (finished_first, ran_retry)
    assert set(ran_first) | set(ran_retry) == set(full_pipeline_steps()), (ran_first, ran_retry)
