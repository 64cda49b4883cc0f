"""Search building blocks without tracking or training: space adapters, summaries, helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medtune.hpo.base import COMPLETE, FAILED, PRUNED, TrialSummary, best_trial
from medtune.hpo.trial import best_of, objective_direction, probe_indices
from medtune.space import load_space, parse_space, resolve_space_path


@pytest.fixture(scope="module")
def demo():
    return load_space(resolve_space_path("demo"))


def _adam(space) -> dict:
    values = space.defaults()
    assert values["optimizer"] == "adam" and "momentum" not in values
    return values


# ---------------------------------------------------------------- Optuna adapter


def test_optuna_suggest_fixed_trial_skips_inactive_momentum(demo):
    import optuna

    from medtune.hpo.optuna_engine import suggest

    values = _adam(demo)
    got = suggest(optuna.trial.FixedTrial(values), demo)  # FixedTrial raises on a param it was not given
    assert got == values
    assert list(got) == [n for n in demo.names() if n != "momentum"]  # file order


def test_optuna_suggest_fixed_trial_asks_momentum_for_sgd(demo):
    import optuna

    from medtune.hpo.optuna_engine import suggest

    values = {**_adam(demo), "optimizer": "sgd", "momentum": 0.95}
    got = suggest(optuna.trial.FixedTrial(values), demo)
    assert got["momentum"] == 0.95 and got["optimizer"] == "sgd"
    assert set(got) == set(demo.names())
    assert isinstance(got["residual"], bool) and isinstance(got["num_blocks"], int)


def test_optuna_distributions_match_the_space(demo):
    import optuna

    from medtune.hpo.optuna_engine import distributions

    dists = distributions(demo)
    assert list(dists) == demo.names()
    assert isinstance(dists["l2"], optuna.distributions.FloatDistribution) and dists["l2"].log
    assert dists["dropout"].step == pytest.approx(0.1)
    assert dists["dense_units"].step == 64 and isinstance(dists["dense_units"], optuna.distributions.IntDistribution)
    assert dists["residual"].choices == (False, True)
    assert dists["optimizer"].choices == ("adam", "rmsprop", "sgd")


# ---------------------------------------------------------------- keras-tuner adapter


def test_keras_tuner_declare_defaults_without_momentum(demo):
    kt = pytest.importorskip("keras_tuner")
    from medtune.hpo.keras_tuner_engine import active_values, declare

    hp = kt.HyperParameters()
    values = declare(hp, demo)
    assert values == _adam(demo)
    assert {h.name for h in hp.space} == set(demo.names())  # momentum declared, conditionally
    momentum = next(h for h in hp.space if h.name == "momentum")
    assert momentum.conditions and not hp.is_active(momentum)
    assert active_values(demo, hp.values) == values


def test_keras_tuner_declare_momentum_only_for_sgd(demo):
    kt = pytest.importorskip("keras_tuner")
    from medtune.hpo.keras_tuner_engine import active_values, declare

    hp = kt.HyperParameters()
    hp.Fixed("optimizer", "sgd")
    values = declare(hp, demo)
    assert values["optimizer"] == "sgd" and values["momentum"] == pytest.approx(0.9)

    # What the oracle hands a trial: bookkeeping keys and a stale inactive value are dropped.
    raw = {**hp.values, "optimizer": "rmsprop", "tuner/epochs": 2, "tuner/round": 0, "residual": 1}
    got = active_values(demo, raw)
    assert "momentum" not in got and not any(k.startswith("tuner/") for k in got)
    assert got["residual"] is True
    assert list(got) == [n for n in demo.names() if n != "momentum"]


# ---------------------------------------------------------------- summaries and plots


def _summaries(demo, intermediate: bool) -> list[TrialSummary]:
    base = _adam(demo)
    sgd = {**base, "optimizer": "sgd", "momentum": 0.85, "learning_rate": 0.002}
    out = [
        TrialSummary(0, COMPLETE, 0.50, dict(base), duration_s=3.0, epochs_run=2, run_id="r0"),
        TrialSummary(1, COMPLETE, 0.75, sgd, duration_s=4.0, epochs_run=2, run_id="r1"),
        TrialSummary(2, FAILED, None, {**base, "num_blocks": 2}, error="TrainingDiverged: loss became nan"),
        TrialSummary(3, PRUNED, None, {**base, "filters": 16}, epochs_run=1),
        TrialSummary(4, COMPLETE, 0.60, {**base, "dropout": 0.4, "batch_size": 16}, epochs_run=2),
    ]
    if intermediate:
        for s, curve in zip(out, ([0.4, 0.5], [0.6, 0.75], [], [0.1], [0.55, 0.6])):
            s.intermediate = dict(enumerate(curve))
    return out


def test_trials_table_has_every_trial_and_every_space_param(demo):
    from medtune.hpo.summary import trials_table

    summaries = _summaries(demo, intermediate=True)
    table = trials_table(list(reversed(summaries)), demo)
    assert list(table["number"]) == [0, 1, 2, 3, 4]
    assert list(table.columns[:7]) == ["number", "state", "value", "duration_s", "epochs_run", "run_id", "error"]
    assert list(table.columns[7:]) == demo.names()
    assert table.loc[1, "momentum"] == 0.85
    assert table.loc[0, "momentum"] is None or math.isnan(table.loc[0, "momentum"])
    assert table.loc[2, "error"].startswith("TrainingDiverged")
    assert list(table["state"]) == [COMPLETE, COMPLETE, FAILED, PRUNED, COMPLETE]


@pytest.mark.parametrize("intermediate", [True, False], ids=["optuna-like", "keras-tuner-like"])
def test_search_figures_from_summaries(demo, intermediate):
    import matplotlib.pyplot as plt

    from medtune.hpo.summary import as_study, search_figures

    summaries = _summaries(demo, intermediate)
    study = as_study(summaries, demo, "maximize")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    assert study.best_value == 0.75
    figures = search_figures(summaries, demo, "maximize")
    assert set(figures) == {"optimization_history.png", "param_importances.png", "parallel_coordinate.png"}
    for fig in figures.values():
        assert fig.axes
        plt.close(fig)


def test_search_figures_with_few_trials(demo):
    import matplotlib.pyplot as plt

    from medtune.hpo.summary import search_figures

    one = [TrialSummary(0, COMPLETE, 0.4, _adam(demo)), TrialSummary(1, FAILED, None, _adam(demo))]
    figures = search_figures(one, demo, "maximize")
    assert set(figures) == {"optimization_history.png"}
    plt.close(figures["optimization_history.png"])
    assert search_figures([TrialSummary(0, FAILED, None, {})], demo, "maximize") == {}
    assert search_figures([], demo, "minimize") == {}


def test_as_study_leaves_out_values_outside_the_space(demo):
    from medtune.hpo.summary import as_study

    odd = {**_adam(demo), "filters": 64, "not_in_space": 1}  # e.g. a trial of an older space file
    study = as_study(
        [TrialSummary(0, COMPLETE, 0.3, odd), TrialSummary(1, COMPLETE, 0.4, _adam(demo))], demo, "maximize"
    )
    assert len(study.trials) == 2
    assert "filters" not in study.trials[0].params and "not_in_space" not in study.trials[0].params
    assert study.trials[1].params == _adam(demo)


# ---------------------------------------------------------------- helpers


def test_best_of():
    nan = float("nan")
    assert best_of([0.2, 0.5, nan, 0.4], "maximize") == (0.5, 1)
    assert best_of([0.9, 0.5, None, 0.7], "minimize") == (0.5, 1)
    assert best_of([0.5, 0.5, 0.5], "maximize") == (0.5, 0)  # ties: the earliest epoch
    assert best_of([0.3, 0.3], "minimize") == (0.3, 0)
    value, epoch = best_of([nan, None], "maximize")
    assert math.isnan(value) and epoch == -1
    value, epoch = best_of([], "minimize")
    assert math.isnan(value) and epoch == -1


def test_best_trial_and_directions():
    trials = [TrialSummary(0, COMPLETE, 0.3, {}), TrialSummary(1, PRUNED, None, {}), TrialSummary(2, COMPLETE, 0.1, {})]
    assert best_trial(trials, "maximize").number == 0
    assert best_trial(trials, "minimize").number == 2
    assert best_trial([TrialSummary(0, FAILED, None, {})], "maximize") is None
    assert objective_direction("val_loss") == "minimize"
    assert objective_direction("val_macro_f1") == "maximize"
    from medtune.errors import ConfigError

    with pytest.raises(ConfigError, match="val_f2"):
        objective_direction("val_f2")


def test_probe_indices():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 0, 3])
    idx = probe_indices(y, 5, per_class=2, seed=7)
    assert np.array_equal(idx, probe_indices(y, 5, per_class=2, seed=7))  # fixed by seed
    counts = np.bincount(y[idx], minlength=5)
    assert list(counts) == [2, 2, 2, 1, 0]  # a rare class gives what it has; an absent one nothing
    assert len(set(idx.tolist())) == len(idx)
    for c in range(4):  # sorted within each class, classes in order
        picks = idx[y[idx] == c]
        assert list(picks) == sorted(picks)
    assert list(y[idx]) == sorted(y[idx])
    assert probe_indices(np.array([], dtype=int), 3).size == 0
    assert probe_indices(y, 5, per_class=2, seed=1).dtype.kind == "i"


def test_parse_space_condition_used_by_both_adapters():
    """A space with a condition on a bool parent works with both adapters."""
    import optuna

    from medtune.hpo.optuna_engine import suggest

    space = parse_space(
        {
            "params": {
                "residual": {"type": "bool"},
                "width": {"type": "int", "low": 1, "high": 3, "condition": {"residual": True}},
            }
        }
    )
    assert suggest(optuna.trial.FixedTrial({"residual": False}), space) == {"residual": False}
    assert suggest(optuna.trial.FixedTrial({"residual": True, "width": 2}), space) == {"residual": True, "width": 2}


# ---------------------------------------------------------------- an edited space, a failure loop


def _tiny_space(tmp_path, choices):
    path = tmp_path / f"s{len(choices)}.yaml"
    path.write_text(
        "params:\n  filters: {type: categorical, choices: %s}\n  dense_units: {type: int, low: 4, high: 8}\n"
        % list(choices)
    )
    return load_space(path)


def test_a_study_resumed_with_other_categorical_choices_is_a_clear_error(tmp_path):
    import optuna

    from medtune.errors import SpaceError
    from medtune.hpo import optuna_engine
    from medtune.hpo.base import SearchSettings

    cfg = SearchSettings(study="s", trials=1, epochs=1, storage=f"sqlite:///{tmp_path / 'o.db'}")
    old = _tiny_space(tmp_path, [16, 32, 64])
    study = optuna_engine.open_study(old, cfg)
    study.optimize(lambda t: float(len(optuna_engine.suggest(t, old))), n_trials=1)
    optuna_engine.check_state(old, cfg)  # the same space resumes
    with pytest.raises(
        SpaceError,
        match=r"study s: filters was searched with choices \[16, 32, 64\], the space "
        r"file now has \[16, 32\]; pass --study",
    ):
        optuna_engine.check_state(_tiny_space(tmp_path, [16, 32]), cfg)
    assert len(optuna.load_study(study_name="s", storage=cfg.storage).trials) == 1


def test_trials_failing_before_training_stop_the_search(tmp_path, monkeypatch):
    """A failure in suggest (before any training) counts too: the search stops instead of looping."""
    from medtune.hpo import optuna_engine
    from medtune.hpo.base import NullRecorder, SearchSettings

    space = _tiny_space(tmp_path, [16, 32])
    calls = []

    def broken(trial, space):
        calls.append(trial.number)
        raise ValueError("cannot suggest")

    monkeypatch.setattr(optuna_engine, "suggest", broken)
    cfg = SearchSettings(study="loop", trials=2, epochs=1, storage=f"sqlite:///{tmp_path / 'o.db'}")
    out = optuna_engine.run_search(space, None, cfg, NullRecorder())
    assert len(calls) == 4 and {s.state for s in out} == {FAILED}  # stops once failures exceed max(3, trials)


def _curve_trainer(curves: dict, seen: dict):
    """A ``train_trial`` stand-in: trial ``seed - 42`` reports ``curves[n]`` epoch by epoch until
    pruned; ``seen[n]`` records how many epochs it ran."""
    from medtune.hpo.trial import TrialResult

    def fake_train(params, data, *, epochs, seed, on_epoch, **kwargs):
        number = seed - 42
        result = TrialResult()
        for epoch, value in enumerate(curves[number][:epochs]):
            result.history.setdefault("val_macro_f1", []).append(value)
            if on_epoch(epoch, {"val_macro_f1": value}):
                result.pruned = True
                break
        seen[number] = len(result.history["val_macro_f1"])
        result.value, result.best_epoch = max(result.history["val_macro_f1"]), 0
        return result

    return fake_train


def test_asha_pruning_keeps_only_the_best_third_at_each_rung(tmp_path, monkeypatch):
    """ASHA (``pruner=asha``) compares trials after 1 and 3 epochs trained: with fewer than three
    rivals at a rung a trial goes on only if it is the best there, so a trial worse than the first
    one after its first epoch stops, and one that is better goes on to the next rung."""
    from medtune.hpo import optuna_engine
    from medtune.hpo.base import NullRecorder, SearchSettings

    curves = {0: [0.5, 0.6, 0.7, 0.8, 0.8], 1: [0.4, 0.9, 0.9, 0.9, 0.9], 2: [0.6, 0.65, 0.68, 0.9, 0.95]}
    seen = {}
    monkeypatch.setattr(optuna_engine, "train_trial", _curve_trainer(curves, seen))
    cfg = SearchSettings(
        study="a", trials=3, epochs=5, seed=42, pruner="asha", storage=f"sqlite:///{tmp_path / 'o.db'}"
    )
    out = optuna_engine.run_search(_tiny_space(tmp_path, [16, 32]), None, cfg, NullRecorder())
    # trial 1 is below trial 0 after epoch 1; trial 2 is best after epoch 1 but not after epoch 3
    assert [s.state for s in out] == [COMPLETE, PRUNED, PRUNED]
    assert seen == {0: 5, 1: 1, 2: 3}
    assert {int(k) for k in out[0].intermediate} == {1, 2, 3, 4, 5}  # steps are epochs trained


def test_median_pruning_stops_a_bad_trial_after_its_first_epoch_but_never_at_the_last(tmp_path, monkeypatch):
    """The engine feeds the pruner every epoch: after two complete trials, a trial below their
    median at epoch 1 stops there; a trial that is bad only at its last epoch completes."""
    from medtune.hpo import optuna_engine
    from medtune.hpo.base import NullRecorder, SearchSettings

    curves = {0: [0.6, 0.7, 0.8], 1: [0.5, 0.6, 0.7], 2: [0.1, 0.2, 0.3], 3: [0.9, 0.9, 0.1]}
    seen = {}
    monkeypatch.setattr(optuna_engine, "train_trial", _curve_trainer(curves, seen))
    cfg = SearchSettings(study="p", trials=4, epochs=3, seed=42, storage=f"sqlite:///{tmp_path / 'o.db'}")
    out = optuna_engine.run_search(_tiny_space(tmp_path, [16, 32]), None, cfg, NullRecorder())
    assert [s.state for s in out] == [COMPLETE, COMPLETE, PRUNED, COMPLETE]
    assert seen == {0: 3, 1: 3, 2: 1, 3: 3}


def test_a_trial_validates_and_keeps_batchnorm_statistics_of_clean_training_images():
    """train_trial re-estimates BatchNorm on un-augmented training images before each validation
    pass: the model it returns already holds those statistics (re-estimating again changes nothing)."""
    import keras

    from medtune import training
    from medtune.hpo.trial import TrialData, train_trial

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8)
    y = np.arange(48) % 3
    data = TrialData(
        classes=["a", "b", "c"], x_train=x[:36], y_train=y[:36], x_val=x[36:], y_val=y[36:], probe_index=np.arange(3)
    )
    params = {"num_blocks": 2, "filters": 4, "dense_units": 8, "batch_norm": True, "augment": 0.5, "batch_size": 8}
    result = train_trial(params, data, epochs=2, seed=7)
    model = result.model
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns
    kept = [(bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in bns]
    sample = training.PreciseBatchNorm(data.x_train, seed=7)
    training.reestimate_batchnorm(model, data.x_train[sample.index], batch_size=sample.batch_size)
    for bn, (mean, var) in zip(bns, kept):
        np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-4, atol=1e-5)
    result.model = None
    training.release_model()
