"""Error kinds, as keras-tuner has them: one trial's failure is recorded and the search goes on;
an error every trial would hit (medtune's settings or code) stops the search after the first."""

from __future__ import annotations

import numpy as np
import pytest

from medtune.errors import ConfigError, InternalError, TrainingDiverged, stops_the_search
from medtune.hpo.base import COMPLETE, FAILED, NullRecorder, SearchSettings
from medtune.hpo.trial import TrialData, TrialResult
from tests.helpers import two_param_space


class Recorder(NullRecorder):
    def __init__(self):
        self.finished, self.stopped = [], None

    def trial_finished(self, handle, state, result=None, error=None, reason=None):
        self.finished.append((handle, state, type(error).__name__ if error else None))

    def search_stopped(self, reason):
        self.stopped = reason


def _failing(error_of):
    """A ``train_trial`` stand-in: trial ``seed - 42`` raises ``error_of(n)``, or completes when it is None."""

    def fake(params, data, *, epochs, seed, on_epoch, **kwargs):
        error = error_of(seed - 42)
        if error is not None:
            raise error
        result = TrialResult(history={"val_macro_f1": [0.5], "loss": [1.0]})
        result.value, result.best_epoch = 0.5, 0
        return result

    return fake


def test_which_errors_stop_a_search():
    assert stops_the_search(ConfigError("learning_rate: ...")) and stops_the_search(TypeError("bad"))
    assert not stops_the_search(TrainingDiverged("loss is NaN")) and not stops_the_search(MemoryError())
    assert not stops_the_search(ValueError("a shape this configuration cannot take"))


def test_optuna_stops_at_the_first_config_error(tmp_path, monkeypatch):
    from medtune.hpo import optuna_engine

    calls = []
    monkeypatch.setattr(
        optuna_engine,
        "train_trial",
        _failing(lambda n: calls.append(n) or ConfigError("lr_schedule: 'cosin' is not constant or cosine")),
    )
    recorder = Recorder()
    cfg = SearchSettings(study="c", trials=10, epochs=1, seed=42, storage=f"sqlite:///{tmp_path / 'o.db'}")
    with pytest.raises(ConfigError, match="^lr_schedule: 'cosin' is not constant or cosine$"):
        optuna_engine.run_search(two_param_space(tmp_path), None, cfg, recorder)
    assert calls == [0] and recorder.finished == [(0, FAILED, "ConfigError")]
    assert recorder.stopped.startswith("trial failed with an error every trial would hit: lr_schedule")


def test_a_diverged_trial_is_failed_and_the_search_goes_on(tmp_path, monkeypatch):
    from medtune.hpo import optuna_engine

    monkeypatch.setattr(
        optuna_engine, "train_trial", _failing(lambda n: TrainingDiverged("loss is NaN at epoch 1") if n == 0 else None)
    )
    cfg = SearchSettings(study="d", trials=2, epochs=1, seed=42, storage=f"sqlite:///{tmp_path / 'o.db'}")
    out = optuna_engine.run_search(two_param_space(tmp_path), None, cfg, Recorder())
    assert [s.state for s in out] == [FAILED, COMPLETE, COMPLETE]


def test_keras_tuner_stops_at_the_first_type_error_with_one_line(tmp_path, monkeypatch):
    from medtune.hpo import keras_tuner_engine

    calls = []
    monkeypatch.setattr(
        keras_tuner_engine,
        "train_trial",
        _failing(lambda n: calls.append(n) or TypeError("unsupported operand type(s)")),
    )
    x = np.zeros((4, 8, 8, 1), np.uint8)
    data = TrialData(["a", "b"], x, np.array([0, 1, 0, 1]), x, np.array([0, 1, 0, 1]), np.array([0]))
    cfg = SearchSettings(study="kt", trials=10, epochs=1, seed=42, workdir=str(tmp_path / "kt"))
    recorder = Recorder()
    with pytest.raises(InternalError) as info:
        keras_tuner_engine.run_search("bayesian", two_param_space(tmp_path), data, cfg, recorder)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("trial 0 failed with TypeError: unsupported operand type(s) -- every trial")
    assert len(calls) == 1 and recorder.finished[0][1:] == (FAILED, "TypeError")


def test_engines_are_one_registry_with_one_interface():
    from medtune.hpo.engines import ENGINES, REGISTRY, get_engine

    assert ENGINES == tuple(REGISTRY) == ("optuna", "bayesian", "keras_hyperband", "grid")
    assert get_engine("hyperband") is REGISTRY["keras_hyperband"] and get_engine("hyperband").study_label == "hyperband"
    assert [e.name for e in REGISTRY.values() if e.optuna_options] == ["optuna", "grid"]
    assert [e.name for e in REGISTRY.values() if e.grid] == ["grid"]
    for engine in REGISTRY.values():
        assert callable(engine.check_state) and callable(engine.run)
    with pytest.raises(ConfigError, match="engine='tpe': expected one of optuna, bayesian, keras_hyperband, grid"):
        get_engine("tpe")
