"""Experiment definitions: validation naming the field, SQLite persistence across store instances, the CLI."""

from __future__ import annotations

import argparse

import pytest

from recsys_core.experiments import command
from recsys_core.experiments.definitions import RUNNING, STOPPED, ExperimentDefinition, ExperimentStore


def _cli(store: str, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(["--store", store, *argv]))


def test_create_list_stop_survive_a_new_store_instance(tmp_path, capsys):
    store = str(tmp_path / "experiments.sqlite")
    assert _cli(store, "create", "rank-v2", "--arm", "champion=alias:champion", "--arm", "challenger=version:7",
                "--share", "champion=0.4", "--share", "challenger=0.4", "--guardrail", "coverage=0.2:higher") == 0
    loaded = ExperimentStore(store).get("rank-v2")
    assert loaded.arms == {"champion": "alias:champion", "challenger": "version:7"}
    assert (loaded.control, loaded.treatment, loaded.shares, loaded.status) == ("champion", "challenger",
                                                                                 {"champion": 0.4, "challenger": 0.4}, RUNNING)
    assert loaded.effective_salt == "rank-v2" and loaded.start_time > 0
    assert [(g.metric, g.max_relative_change, g.higher_is_better) for g in loaded.guardrails] == [("coverage", 0.2, True)]
    _cli(store, "stop", "rank-v2", "--reason", "done")
    stopped = ExperimentStore(store).get("rank-v2")
    assert stopped.status == STOPPED and stopped.stop_reason == "done" and stopped.stopped_at >= loaded.start_time
    capsys.readouterr()
    _cli(store, "list")
    assert "rank-v2\tstopped\tchampion=alias:champion (40%) vs challenger=version:7 (40%)\tctr" in capsys.readouterr().out
    assert ExperimentStore(store).list(running_only=True) == []


def test_bad_definitions_name_the_field_and_store_nothing(tmp_path):
    store = str(tmp_path / "experiments.sqlite")
    with pytest.raises(SystemExit, match=r"arms.challenger: 'champion' is not alias:NAME or version:N"):
        _cli(store, "create", "x", "--arm", "champion=alias:champion", "--arm", "challenger=champion")
    with pytest.raises(SystemExit, match=r"shares: each in \(0, 1\], summing to at most 1"):
        _cli(store, "create", "x", "--arm", "a=version:1", "--arm", "b=version:2", "--share", "a=0.7", "--share", "b=0.7")
    with pytest.raises(SystemExit, match="expected NAME=VALUE"):
        _cli(store, "create", "x", "--arm", "a")
    assert ExperimentStore(store).list() == []
    with pytest.raises(ValueError, match="primary_metric 'revenue'"):
        ExperimentDefinition("x", {"a": "version:1", "b": "version:2"}, {"a": 0.5, "b": 0.5}, primary_metric="revenue")


def test_names_are_unique(tmp_path):
    store = ExperimentStore(tmp_path / "e.sqlite")
    store.create(ExperimentDefinition("x", {"a": "version:1", "b": "version:2"}, {"a": 0.5, "b": 0.5}))
    with pytest.raises(ValueError, match="already exists"):
        store.create(ExperimentDefinition("x", {"a": "version:1", "b": "version:3"}, {"a": 0.5, "b": 0.5}))
    with pytest.raises(KeyError, match="no experiment 'y'"):
        store.get("y")
