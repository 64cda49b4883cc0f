"""The budgeted search: time budget (fake clock), resolution rungs, warm starts, the plateau stop.

The engines run for real (Optuna's study in SQLite, keras-tuner's oracle on disk); only
``train_trial`` is replaced by a scripted stand-in where the test is about the engine's
decisions, and runs for real on the synthetic images where it is about the rungs themselves.
"""

from __future__ import annotations

import numpy as np
import pytest

from medtune.hpo.base import COMPLETE, PRUNED, NullRecorder, SearchSettings
from medtune.hpo.trial import TrialResult, rung_schedule
from medtune.planning.budget import Budget
from medtune.space import load_space
from tests.helpers import two_param_space


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Recorder(NullRecorder):
    """Remembers which trials started, how they ended and why the search stopped."""

    def __init__(self, clock: FakeClock | None = None):
        self.started, self.finished, self.stopped, self.clock = [], [], None, clock
        self.start_times = []

    def trial_started(self, number, params, recipe=None):
        self.started.append(number)
        self.start_times.append(self.clock.now if self.clock else 0.0)
        return number

    def trial_finished(self, handle, state, result=None, error=None, reason=None):
        self.finished.append((handle, state, reason))

    def search_stopped(self, reason):
        self.stopped = reason


def _scripted(values_of, clock: FakeClock | None = None, epoch_s: float = 0.0, seen: dict | None = None):
    """A ``train_trial`` stand-in: trial ``seed - 42`` reports ``values_of(n)`` per epoch; each epoch
    advances the fake clock by ``epoch_s``."""

    def fake(params, data, *, epochs, seed, on_epoch, rungs=None, **kwargs):
        number = seed - 42
        result = TrialResult()
        for epoch, value in enumerate(values_of(number)[:epochs]):
            if clock is not None:
                clock.now += epoch_s
            result.history.setdefault("val_macro_f1", []).append(value)
            result.history.setdefault("loss", []).append(1.0)
            if on_epoch(epoch, {"val_macro_f1": value}):
                result.pruned = True
                break
        if seen is not None:
            seen[number] = len(result.history["val_macro_f1"])
        result.value, result.best_epoch = max(result.history["val_macro_f1"]), 0
        return result

    return fake


# ---------------------------------------------------------------- the time budget


def test_optuna_starts_no_trial_after_the_budget_and_stops_the_running_one_at_an_epoch(tmp_path, monkeypatch):
    from medtune.hpo import optuna_engine

    clock = FakeClock()
    seen = {}
    monkeypatch.setattr(
        optuna_engine, "train_trial", _scripted(lambda n: [0.5, 0.6, 0.7, 0.8], clock, epoch_s=10.0, seen=seen)
    )
    cfg = SearchSettings(
        study="b",
        trials=50,
        epochs=4,
        seed=42,
        pruner="none",
        storage=f"sqlite:///{tmp_path / 'o.db'}",
        budget=Budget(100.0, clock).start(),
    )
    recorder = Recorder(clock)
    out = optuna_engine.run_search(two_param_space(tmp_path), None, cfg, recorder)
    # 40 s per full trial: trials 0 and 1 complete (80 s), trial 2 is stopped after its 2nd epoch (100 s)
    assert [s.state for s in out] == [COMPLETE, COMPLETE, PRUNED]
    assert seen == {0: 4, 1: 4, 2: 2}
    assert all(t < 100.0 for t in recorder.start_times)  # no trial started once the budget was spent
    assert recorder.finished[-1] == (2, PRUNED, "time budget spent")
    assert recorder.stopped.startswith("time budget of 1.7 min spent after 3 trials")
    assert cfg.budget.record() == {"budget_planned_s": 100.0, "budget_used_s": 100.0}


def test_keras_tuner_honours_the_budget_too(tmp_path, monkeypatch):
    from medtune.hpo import keras_tuner_engine
    from medtune.hpo.trial import TrialData

    clock = FakeClock()
    seen = {}
    monkeypatch.setattr(
        keras_tuner_engine, "train_trial", _scripted(lambda n: [0.5, 0.6, 0.7, 0.8], clock, epoch_s=10.0, seen=seen)
    )
    x = np.zeros((4, 8, 8, 1), np.uint8)
    data = TrialData(["a", "b"], x, np.array([0, 1, 0, 1]), x, np.array([0, 1, 0, 1]), np.array([0]))
    cfg = SearchSettings(
        study="kt", trials=20, epochs=4, seed=42, workdir=str(tmp_path / "kt"), budget=Budget(100.0, clock).start()
    )
    recorder = Recorder(clock)
    out = keras_tuner_engine.run_search("bayesian", two_param_space(tmp_path), data, cfg, recorder)
    numbers = sorted(seen)
    assert [seen[n] for n in numbers] == [4, 4, 2]  # the third trial stops at its epoch boundary
    assert [s.state for s in out] == [COMPLETE, COMPLETE, PRUNED]  # recorded as Optuna records it
    assert recorder.finished[-1][1:] == (PRUNED, "stopped: time budget spent")
    assert recorder.stopped.startswith("time budget of 1.7 min spent")
    assert all(t < 100.0 for t in recorder.start_times)


# ---------------------------------------------------------------- the plateau stop


def test_the_search_stops_when_it_has_plateaued(tmp_path, monkeypatch):
    from medtune.hpo import optuna_engine

    script = {0: 0.60, 1: 0.70, 2: 0.69, 3: 0.70, 4: 0.65, 5: 0.7005, 6: 0.99}
    monkeypatch.setattr(optuna_engine, "train_trial", _scripted(lambda n: [script[n]]))
    cfg = SearchSettings(
        study="p",
        trials=7,
        epochs=1,
        seed=42,
        pruner="none",
        plateau_patience=4,
        storage=f"sqlite:///{tmp_path / 'o.db'}",
    )
    recorder = Recorder()
    out = optuna_engine.run_search(two_param_space(tmp_path), None, cfg, recorder)
    assert len(out) == 6  # trials 2-5 improved nothing beyond 1e-3: trial 6 never runs
    assert recorder.stopped == (
        "plateau: no trial improved the best value 0.7000 by more than 0.001 in the last 4 trials"
    )


# ---------------------------------------------------------------- rungs


def test_rung_schedule_splits_the_epochs_and_keeps_the_largest_sizes():
    assert rung_schedule(None, 5) == [(None, 0, 5)]
    assert rung_schedule((32, 48, 64), 3) == [(32, 0, 1), (48, 1, 2), (64, 2, 3)]
    assert rung_schedule((32, 48, 64), 7) == [(32, 0, 2), (48, 2, 4), (64, 4, 7)]
    assert rung_schedule((32, 48, 64), 2) == [(48, 0, 1), (64, 1, 2)]


def test_the_pruner_decides_only_at_the_end_of_a_rung(tmp_path, monkeypatch):
    from medtune.hpo import optuna_engine

    curves = {0: [0.6, 0.7, 0.8, 0.9], 1: [0.6, 0.7, 0.8, 0.9], 2: [0.1, 0.2, 0.3, 0.4]}
    seen = {}
    monkeypatch.setattr(optuna_engine, "train_trial", _scripted(lambda n: curves[n], seen=seen))
    cfg = SearchSettings(
        study="r",
        trials=3,
        epochs=4,
        seed=42,
        pruner="median",
        rungs=(32, 48),
        storage=f"sqlite:///{tmp_path / 'o.db'}",
    )
    out = optuna_engine.run_search(two_param_space(tmp_path), None, cfg, NullRecorder())
    # below the median from its first epoch, trial 2 is still trained to the end of rung 1 (2 epochs)
    assert [s.state for s in out] == [COMPLETE, COMPLETE, PRUNED]
    assert seen == {0: 4, 1: 4, 2: 2}


def test_a_promoted_trial_continues_from_its_own_weights_at_the_larger_size(monkeypatch):
    """Real training on synthetic images: 32 px for one epoch, then 48 px from the same weights."""
    import medtune.models as models
    from medtune.datasets.synthetic import CLASSES, generate
    from medtune.hpo import trial as trial_module
    from medtune.hpo.trial import TrialData, train_trial

    x, y, _ = generate(8, 48, seed=0)
    data = TrialData(list(CLASSES), x, y.astype(np.int32), x[::2], y[::2].astype(np.int32), np.arange(4))
    built, handed = [], []
    real_build = models.build_model

    def spy(params, input_shape, n_classes, **kwargs):
        model = real_build(params, input_shape, n_classes, **kwargs)
        real_set = model.set_weights
        model.set_weights = lambda w: (handed.append([a.copy() for a in w]), real_set(w))[1]
        built.append(model)
        return model

    monkeypatch.setattr(models, "build_model", spy)
    sizes = []
    params = {"num_blocks": 2, "filters": 8, "dense_units": 8, "learning_rate": 1e-3, "augment": 0.0}
    result = train_trial(
        params,
        data,
        epochs=2,
        rungs=(32, 48),
        seed=1,
        on_epoch=lambda e, logs: sizes.append(logs["image_size"]) and False,
    )
    assert [m.input_shape[1] for m in built] == [32, 48]
    assert sizes == [32.0, 48.0] and result.history["image_size"] == [32.0, 48.0]
    # the 48 px network was given exactly the weights the 32 px one ended its rung with
    assert len(handed) == 1
    assert all(np.array_equal(a, b) for a, b in zip(handed[0], built[0].get_weights()))
    assert result.model is built[1] and result.model.input_shape[1] == 48
    assert result.val_proba.shape == (len(data.x_val), len(data.classes))
    # the recorder only renders: the core returns the confusion counts and the probe's heat-maps at 48 px
    assert result.confusion.shape == (4, 4) and result.confusion.sum() == len(data.y_val)
    assert result.probe.images.shape[:3] == (4, 48, 48) and result.probe.heatmaps.shape[0] == 4
    assert list(result.probe.labels) == list(data.y_val[:4]) and result.probe.proba.shape == (4, 4)
    assert trial_module.resize_images(x[:2], 32).shape == (2, 32, 32, x.shape[-1])


def _in_threads(work, n: int = 4, timeout: float = 60) -> list[Exception]:
    """Run ``work`` in ``n`` threads at once (as ``n`` workers); the exceptions they raised."""
    import threading

    errors: list[Exception] = []

    def worker():
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return errors


# ---------------------------------------------------------------- warm starts


def test_a_new_study_runs_the_recipes_first_and_imports_earlier_studies(tmp_path, monkeypatch):
    import optuna

    from medtune.hpo import optuna_engine
    from medtune.planning.recipes import recipes_for
    from medtune.space import resolve_space_path

    space = load_space(resolve_space_path("auto_cpu"))
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    monkeypatch.setattr(optuna_engine, "train_trial", _scripted(lambda n: [0.5 + 0.01 * n]))
    first = SearchSettings(
        study="first", trials=4, epochs=1, seed=42, pruner="none", storage=storage, warm_start="recipes", split="abc"
    )
    out = optuna_engine.run_search(space, None, first, NullRecorder())
    recipes = recipes_for(space)
    assert [s.params for s in out[: len(recipes)]] == [p for _, p in recipes]
    study = optuna.load_study(study_name="first", storage=storage)
    assert [t.user_attrs.get("recipe") for t in study.trials[: len(recipes)]] == [n for n, _ in recipes]

    # same split and fidelity: `auto` imports the first study's trials; another fidelity is not imported
    other = SearchSettings(study="other", trials=1, epochs=3, seed=42, pruner="none", storage=storage, split="abc")
    optuna_engine.run_search(space, None, other, NullRecorder())
    second = SearchSettings(
        study="second", trials=6, epochs=1, seed=7, pruner="none", storage=storage, warm_start="auto", split="abc"
    )
    out2 = optuna_engine.run_search(space, None, second, NullRecorder())
    imported = [
        t for t in optuna.load_study(study_name="second", storage=storage).trials if "imported_from" in t.user_attrs
    ]
    assert sorted(t.user_attrs["imported_from"] for t in imported) == [f"first#{i}" for i in range(4)]
    assert [t.value for t in imported] == [s.value for s in out]
    assert len([s for s in out2 if s.state == COMPLETE]) == 6  # the imported 4 count towards the budget

    with pytest.raises(Exception, match="warm_start=other: that study measured val_macro_f1:3ep"):
        optuna_engine.run_search(
            space,
            None,
            SearchSettings(study="third", trials=1, epochs=1, storage=storage, warm_start="other", split="abc"),
            NullRecorder(),
        )


def test_workers_starting_together_on_a_new_study_queue_each_recipe_once(tmp_path):
    """Four workers open one new study at once: the one that creates it queues the recipes."""
    import threading

    import optuna

    from medtune.hpo import optuna_engine
    from medtune.planning.recipes import recipes_for
    from medtune.space import resolve_space_path

    space = load_space(resolve_space_path("auto_cpu"))
    cfg = SearchSettings(
        study="together", trials=8, epochs=1, storage=f"sqlite:///{tmp_path / 'o.db'}", warm_start="recipes", split="a"
    )
    barrier = threading.Barrier(4)
    errors = _in_threads(lambda: (barrier.wait(), optuna_engine.open_study(space, cfg)), timeout=60)
    assert not errors, errors
    queued = [t.user_attrs["recipe"] for t in optuna.load_study(study_name="together", storage=cfg.storage).trials]
    assert queued == [name for name, _ in recipes_for(space)]


def test_a_named_recipe_is_the_only_trial_queued(tmp_path, monkeypatch):
    """``warm_start=recipe:<name>`` (main's plan under 45 CPU minutes): that recipe, tagged, and nothing else."""
    import optuna

    from medtune.hpo import optuna_engine
    from medtune.planning.recipes import recipes_for
    from medtune.space import resolve_space_path

    space = load_space(resolve_space_path("auto_cpu"))
    monkeypatch.setattr(optuna_engine, "train_trial", _scripted(lambda n: [0.9]))
    cfg = SearchSettings(
        study="one", trials=1, epochs=2, storage=f"sqlite:///{tmp_path / 'o.db'}", warm_start="recipe:lite0_whole"
    )
    [only] = optuna_engine.run_search(space, None, cfg, NullRecorder())
    assert only.params == dict(recipes_for(space, ["lite0_whole"]))["lite0_whole"]
    [trial] = optuna.load_study(study_name="one", storage=cfg.storage).trials
    assert trial.user_attrs["recipe"] == "lite0_whole" and trial.state.name == "COMPLETE"

    for bad, space_name in (("nosuch", "auto_cpu"), ("lite0_whole", "cnn_cpu")):  # cnn_cpu has no Lite0
        bad_cfg = SearchSettings(
            study=f"bad-{bad}", trials=1, epochs=1, storage=cfg.storage, warm_start=f"recipe:{bad}"
        )
        with pytest.raises(Exception, match=f"warm_start=recipe:{bad}: not a recipe this space can express"):
            optuna_engine.open_study(load_space(resolve_space_path(space_name)), bad_cfg)


def test_a_bad_warm_start_leaves_no_study_behind(tmp_path):
    import optuna

    from medtune.hpo import optuna_engine

    cfg = SearchSettings(study="s", trials=2, epochs=1, storage=f"sqlite:///{tmp_path / 'o.db'}", warm_start="nosuch")
    with pytest.raises(Exception, match="warm_start=nosuch: no such study in this storage"):
        optuna_engine.open_study(two_param_space(tmp_path), cfg)
    assert optuna.get_all_study_names(cfg.storage) == []  # the fixed command seeds the study it creates


# ---------------------------------------------------------------- a worker that dies


def test_a_dead_workers_trial_is_failed_by_the_heartbeat_retried_once_and_its_run_ended_by_the_survivor(
    tmp_path, monkeypatch
):
    """Real Optuna heartbeats (SQLite): a trial of a worker on another host stops beating mid-trial."""
    import time

    import optuna

    from medtune.hpo import optuna_engine

    monkeypatch.setenv("MEDTUNE_HEARTBEAT", "1,2")
    monkeypatch.setattr(optuna_engine, "train_trial", _scripted(lambda n: [0.5 + 0.01 * n]))
    space = two_param_space(tmp_path)
    cfg = SearchSettings(
        study="workers", trials=3, epochs=1, seed=42, pruner="none", storage=f"sqlite:///{tmp_path / 'o.db'}"
    )
    study = optuna_engine.open_study(space, cfg)
    dead = study.ask(
        {
            "filters": optuna.distributions.CategoricalDistribution([16, 32]),
            "dense_units": optuna.distributions.IntDistribution(4, 8),
        }
    )
    for key, value in {"host": "other-host", "pid": 4321, "mlflow_run_id": "RUN-OF-THE-DEAD"}.items():
        dead.set_user_attr(key, value)
    study._storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)  # past the grace period: the dead worker's last heartbeat is stale

    class Survivor(Recorder):
        abandoned = []

        def trial_abandoned(self, run_id, reason):
            self.abandoned.append((run_id, reason))

    survivor = Survivor()
    optuna_engine.run_search(space, None, cfg, survivor)
    assert survivor.abandoned == [("RUN-OF-THE-DEAD", "worker other-host:4321 stopped beating")]
    trials = optuna.load_study(study_name="workers", storage=cfg.storage).trials
    states = [t.state.name for t in trials]
    assert states[dead.number] == "FAIL" and states.count("RUNNING") == 0
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retried) == 1 and retried[0].params == dead.params and retried[0].state.name == "COMPLETE"
    assert states.count("COMPLETE") == 3  # the budget, none repeated beyond the one retry


def test_workers_sharing_a_study_never_overshoot_its_trial_budget(tmp_path, monkeypatch):
    """Four workers (threads, one real SQLite study) share a budget of 5 trials that all overlap in time."""
    import time

    import optuna

    from medtune.hpo import optuna_engine

    def slow(params, data, *, epochs, seed, on_epoch, **kwargs):
        result = TrialResult()
        for epoch in range(epochs):
            time.sleep(0.3)
            result.history.setdefault("val_macro_f1", []).append(0.5)
            on_epoch(epoch, {"val_macro_f1": 0.5})
        result.value, result.best_epoch = 0.5, 0
        return result

    monkeypatch.setattr(optuna_engine, "train_trial", slow)
    monkeypatch.setattr(optuna_engine, "WAIT_FOR_WORKERS_S", 0.2, raising=False)
    space = two_param_space(tmp_path)
    cfg = SearchSettings(
        study="shared", trials=5, epochs=2, seed=42, pruner="none", storage=f"sqlite:///{tmp_path / 'o.db'}"
    )
    optuna_engine.open_study(space, cfg)  # created once, as the first worker would
    errors = _in_threads(lambda: optuna_engine.run_search(space, None, cfg, NullRecorder()), timeout=120)
    assert not errors
    states = [t.state.name for t in optuna.load_study(study_name="shared", storage=cfg.storage).trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 5, states
    assert "RUNNING" not in states
    refused = [
        t for t in optuna.load_study(study_name="shared", storage=cfg.storage).trials if t.user_attrs.get("surplus")
    ]
    assert all(t.state.name == "FAIL" for t in refused)  # a worker that came too late ran nothing
