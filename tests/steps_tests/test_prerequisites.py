"""steps.pipeline.ensure_split: the split a step needs, run once; the loader itself only reads."""

from __future__ import annotations

import os

import pytest

from medtune import tracking
from medtune.errors import DataError
from medtune.steps.pipeline import ensure_split
from medtune.tracking.splits import load_split


def test_the_loader_only_reads_and_ensure_split_runs_the_split_once(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_RUN_ID", "f" * 32)  # a launcher run: it belongs to the step the user asked for
    with pytest.raises(DataError, match=r"dataset=synthetic: no finished split run; run `medtune split"):
        load_split("synthetic", 32)
    ensure_split("synthetic", 32)
    ensure_split("synthetic", 32)  # a split exists now: nothing runs
    runs = tracking.find_runs("synthetic", "split")
    assert len(runs) == 1
    assert "medtune.launcher_run_id" not in runs[0].data.tags
    assert os.environ["MLFLOW_RUN_ID"] == "f" * 32  # left for the step that follows
    split = load_split("synthetic", 32)
    assert split.run_id == runs[0].info.run_id and split.cache.x["train"].shape[1:3] == (32, 32)


def test_a_named_split_run_is_never_replaced(project):
    ensure_split("synthetic", 32, split_run="0" * 32)  # the loader reports a wrong id, not a new split
    assert tracking.find_runs("synthetic", "split") == []
