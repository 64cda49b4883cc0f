"""engine=grid: Optuna's GridSampler over categorical, boolean and stepped values."""

from __future__ import annotations

import logging
import re

import pytest

from medtune.errors import SpaceError
from medtune.hpo.grid import describe, grid_size, grid_values
from medtune.space import parse_space
from medtune.steps.pipeline import ensure_split

GRID_SPACE = """
params:
  filters: {type: categorical, choices: [16, 32]}
  batch_norm: {type: bool}
  num_blocks: {type: categorical, choices: [2]}
  dropout: {type: float, low: 0.0, high: 0.2, step: 0.1}
  learning_rate: {type: categorical, choices: [0.001]}
"""


def test_grid_values_enumerate_choices_booleans_and_steps():
    import yaml

    values = grid_values(parse_space(yaml.safe_load(GRID_SPACE), "grid.yaml"))
    assert values == {
        "filters": [16, 32],
        "batch_norm": [False, True],
        "num_blocks": [2],
        "dropout": [0.0, 0.1, 0.2],
        "learning_rate": [0.001],
    }
    assert grid_size(values) == 12
    assert describe(values).startswith("12 points: filters 2 x batch_norm 2 x num_blocks 1 x dropout 3")


def test_continuous_parameters_without_step_are_named_in_one_line():
    import yaml

    space = parse_space(
        yaml.safe_load("""
params:
  l2: {type: float, low: 1.0e-6, high: 1.0e-3, log: true}
  optimizer: {type: categorical, choices: [adam, sgd]}
  momentum: {type: float, low: 0.8, high: 0.99, condition: {optimizer: sgd}}
"""),
        "mine.yaml",
    )
    with pytest.raises(SpaceError) as info:
        grid_values(space)
    message = str(info.value)
    assert "\n" not in message and "mine.yaml" in message and "l2, momentum are continuous without a step" in message


@pytest.mark.slow
def test_grid_search_tries_every_point_once_and_prints_the_size_first(project, store, caplog, tmp_path):
    from medtune.steps.search import SearchOptions, run_search

    space = tmp_path / "grid.yaml"
    space.write_text("""
params:
  num_blocks: {type: categorical, choices: [2]}
  filters: {type: categorical, choices: [16]}
  batch_norm: {type: bool}
  dropout: {type: float, low: 0.0, high: 0.2, step: 0.2}
  learning_rate: {type: categorical, choices: [0.001]}
  batch_size: {type: categorical, choices: [32]}
""")
    caplog.set_level(logging.INFO)
    ensure_split("synthetic", 32)
    out = run_search(
        SearchOptions(dataset="synthetic", engine="grid", space=str(space), epochs=1, image_size=32, pruner="none")
    )
    messages = [r.getMessage() for r in caplog.records]
    size_line = next(i for i, m in enumerate(messages) if m.startswith("Grid of grid.yaml: 4 points"))
    first_trial = next(i for i, m in enumerate(messages) if m.startswith("trial 0 started"))
    assert size_line < first_trial
    finished = [m for m in messages if " COMPLETE in " in m]
    assert re.search(r"; 1 of 4 done, ETA \d+ s\)$", finished[0]), finished  # time left, after each trial
    assert finished[-1].endswith("; 4 of 4 done)"), finished
    points = {(s.params["batch_norm"], s.params["dropout"]) for s in out.summaries}
    assert len(out.summaries) == 4 and points == {(False, 0.0), (False, 0.2), (True, 0.0), (True, 0.2)}
    parent = store.client.get_run(out.run_id)
    assert parent.data.params["engine"] == "grid" and parent.data.params["trials"] == "4"
    assert len(store.trials(parent=out.run_id)) == 4 and not store.running()


def test_grid_on_the_demo_space_fails_before_any_work(project):
    from medtune.steps.search import SearchOptions, run_search

    with pytest.raises(SpaceError, match="l2, momentum, learning_rate are continuous without a step"):
        run_search(SearchOptions(dataset="synthetic", engine="grid", space="demo"))
    assert not (project.home / ".medtune").exists()
