"""Defaults sized from the machine (medtune.plan) and how the steps use them."""

from __future__ import annotations

import pytest

from medtune import plan
from medtune.errors import ConfigError
from medtune.plan import Machine, plan_defaults
from medtune.steps.search import SearchOptions, check_options


def test_cpu_gets_the_cpu_space_and_asha():
    p = plan_defaults(Machine(gpus=0, cores=2), "dermnet")
    assert (p.space, p.pruner, p.image_size, p.final_image_size) == ("cnn_cpu", "asha", 64, 128)


def test_more_cores_get_more_trials_and_a_gpu_the_full_space():
    small, big = plan_defaults(Machine(0, 2), "brain_mri"), plan_defaults(Machine(0, 32), "brain_mri")
    assert big.trials > small.trials and big.space == "cnn_cpu"
    gpu = plan_defaults(Machine(gpus=1, cores=8), "brain_mri")
    assert gpu.space == "cnn" and gpu.trials > small.trials and gpu.final_epochs >= small.final_epochs


@pytest.mark.parametrize("machine", [Machine(0, 2), Machine(1, 16)])
def test_synthetic_is_the_minutes_long_demo_everywhere(machine):
    p = plan_defaults(machine, "synthetic")
    assert (p.space, p.trials, p.epochs, p.image_size, p.final_epochs, p.final_image_size) == ("demo", 4, 3, 48, 12, 64)


def test_fill_sets_only_what_the_user_left_to_auto(monkeypatch):
    monkeypatch.setenv("MEDTUNE_GPUS", "0")
    plan.detect_machine.cache_clear()
    try:
        opts = plan.fill(
            SearchOptions(dataset="brain_mri", trials=3),
            "brain_mri",
            {"space": "space", "trials": "trials", "epochs": "epochs", "pruner": "pruner"},
        )
    finally:
        plan.detect_machine.cache_clear()
    assert (opts.space, opts.trials, opts.epochs, opts.pruner) == ("cnn_cpu", 3, 8, "asha")


def test_medtune_gpus_overrides_detection(monkeypatch):
    monkeypatch.setenv("MEDTUNE_GPUS", "2")
    plan.detect_machine.cache_clear()
    try:
        assert plan.detect_machine().gpus == 2 and plan.current_plan("dermnet").space == "cnn"
    finally:
        plan.detect_machine.cache_clear()


def test_old_hyperband_engine_name_is_an_alias():
    opts = SearchOptions(engine="hyperband")
    check_options(opts)
    assert opts.engine == "keras_hyperband"


@pytest.mark.parametrize("extra", [{"pruner": "asha"}, {"storage": "sqlite:///x.db"}, {"timeout": 60.0}])
def test_keras_tuner_engines_refuse_optuna_only_options(extra):
    with pytest.raises(ConfigError, match="only the optuna engine takes this"):
        check_options(SearchOptions(engine="bayesian", **extra))
