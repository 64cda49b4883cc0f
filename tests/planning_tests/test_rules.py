"""Plan rules on fabricated fingerprints of different shapes, and the user's overrides."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medtune.planning import DataFingerprint, MachineFingerprint, image_stats, make_plan, render_plan
from medtune.planning.rules import (
    FIRST_EPOCH_TRACE_S,
    FIT_OVERHEAD_S,
    MAX_BUDGETED_TRIALS,
    MAX_TRIALS,
    PLATEAU_MIN,
    epoch_seconds,
    evaluation_reserve,
    plan_final,
)

CPU = MachineFingerprint(gpus=0, cpu_cores=2, memory_gib=24)
GPU = MachineFingerprint(gpus=1, cpu_cores=16, memory_gib=128, gpu_memory_gib=139)


def data(per_class: dict[str, int], median_side=512, colour=0.0) -> DataFingerprint:
    return DataFingerprint(
        classes=tuple(per_class),
        train_per_class=per_class,
        n_train=sum(per_class.values()),
        n_val=sum(per_class.values()) // 5,
        n_test=sum(per_class.values()) // 5,
        median_side=median_side,
        small_side=median_side // 2,
        colour_fraction=colour,
    )


BRAIN = data({"glioma": 900, "meningioma": 920, "notumor": 1100, "pituitary": 960}, median_side=512)
TINY = data({"a": 20, "b": 25}, median_side=300)
IMBALANCED = data(
    {f"c{i}": n for i, n in enumerate([1800, 500, 300, 120, 90, 60, 40, 30, 20])}, median_side=600, colour=1.0
)
SMALL_IMAGES = data({"a": 3000, "b": 3000}, median_side=48)


@pytest.mark.parametrize("budget_min", [30, 60, 120])
def test_the_plan_fits_the_budget_on_cpu(budget_min):
    plan = make_plan(BRAIN, CPU, budget_min * 60)
    assert plan.search_s + plan.final_s == pytest.approx(budget_min * 60)
    assert plan.space == "auto_cpu"
    # final training fits the training images; each member pays a fixed cost, then evaluation
    member = FIT_OVERHEAD_S + plan.final_epochs * epoch_seconds(BRAIN.n_train, plan.final_image_size, CPU)
    final = plan.ensemble * member + evaluation_reserve(plan.final_s)
    assert final <= plan.final_s * 1.01 or plan.final_epochs == 4  # the floor of 4 epochs may exceed a tiny budget
    sizes = plan.search_image_sizes
    assert sizes[-1] == plan.final_image_size and list(sizes) == sorted(sizes) and all(r % 16 == 0 for r in sizes)


def test_more_budget_buys_more_and_larger():
    tiny, short, long = make_plan(BRAIN, CPU, 15 * 60), make_plan(BRAIN, CPU, 30 * 60), make_plan(BRAIN, CPU, 120 * 60)
    assert (tiny.final_image_size, short.final_image_size, long.final_image_size) == (128, 160, 192)
    assert long.final_epochs * long.ensemble > short.final_epochs * short.ensemble
    # an ensemble only when every member still gets 10 epochs; more members as the budget grows
    assert 1 <= short.ensemble <= long.ensemble and long.ensemble >= 2
    assert all(p.final_epochs >= 10 for p in (tiny, short, long) if p.ensemble > 1)
    assert make_plan(BRAIN, CPU, 10 * 60).ensemble == 1
    # the time ends a budgeted search; a longer one waits longer for an improvement
    hour, two = make_plan(BRAIN, CPU, 60 * 60), long
    assert hour.trials == two.trials == MAX_BUDGETED_TRIALS and two.plateau >= hour.plateau >= PLATEAU_MIN


def test_gpu_plans_larger_images_and_an_ensemble():
    cpu, gpu = make_plan(BRAIN, CPU, 3600), make_plan(BRAIN, GPU, 3600)
    assert gpu.space == "auto_gpu" and gpu.final_image_size == 224
    assert gpu.plateau > cpu.plateau and gpu.ensemble >= 2  # more trials fit: a later plateau stop


def test_tiny_data_caps_the_final_epochs():
    plan = make_plan(TINY, CPU, 3600)
    assert plan.final_epochs == 60  # capped: the data is cheap, not worth more
    assert PLATEAU_MIN <= plan.plateau <= MAX_TRIALS // 3  # the expected trials are capped too


def test_class_weights_are_balanced_unless_turned_off():
    plan = make_plan(IMBALANCED, CPU, 3600)
    assert plan.class_weights and "imbalance ratio 90.0" in plan.reasons["class_weights"]
    assert not make_plan(IMBALANCED, CPU, 3600, {"class_weights": False}).class_weights
    assert "colour" in render_plan(plan, IMBALANCED, CPU) and "class weights on" in render_plan(plan, IMBALANCED, CPU)


THUMBNAILS = data({f"c{i}": 800 for i in range(8)}, median_side=28)  # a MedMNIST-like set


@pytest.mark.parametrize("budget_min, size", [(5, 64), (10, 96), (15, 128), (120, 128)])
def test_small_images_are_upsampled_as_far_as_the_budget_pays(budget_min, size):
    plan = make_plan(THUMBNAILS, CPU, budget_min * 60)
    assert plan.final_image_size == size
    assert "small images (median side 28 px) up-sampled" in plan.reasons["final_image_size"]
    one_model = plan_final(plan.final_s, epoch_seconds(THUMBNAILS.n_train, size, CPU), {"ensemble": 1})[1]
    assert one_model >= 12 or size == 64  # the size is paid for, or the floor
    assert make_plan(THUMBNAILS, CPU, budget_min * 60, {"final_image_size": 32}).final_image_size == 32


def test_images_of_64_px_and_more_are_not_upsampled_beyond_their_size():
    plan = make_plan(data({"a": 3000, "b": 3000}, median_side=64), CPU, 3600)
    assert plan.final_image_size == 64 and "up-sampled" not in plan.reasons["final_image_size"]


def test_the_users_values_override_every_rule():
    given = {
        "trials": 7,
        "final_image_size": 96,
        "space": "cnn_cpu",
        "final_epochs": 11,
        "ensemble": 1,
        "search_image_sizes": (64,),
        "class_weights": False,
        "pruner": "asha",
    }
    plan = make_plan(BRAIN, CPU, 3600, given)
    assert {k: getattr(plan, k) for k in given} == given
    assert all(plan.reasons[k] == "given" for k in given)


def test_without_a_budget_the_plan_is_the_machine_sized_defaults():
    from medtune.planning.rules import apply, default_plan, with_given
    from medtune.steps.search import SearchOptions
    from medtune.steps.train import TrainOptions

    cpu, big = default_plan(CPU, "brain_mri"), default_plan(MachineFingerprint(0, 32, 64), "brain_mri")
    assert (cpu.space, cpu.pruner, cpu.search_image_sizes, cpu.final_image_size) == ("cnn_cpu", "asha", (64,), 128)
    assert big.trials > cpu.trials
    gpu = default_plan(GPU, "brain_mri")
    assert gpu.space == "cnn" and gpu.trials > cpu.trials and gpu.final_epochs > cpu.final_epochs
    demo = default_plan(GPU, "synthetic")  # the minutes-long demo everywhere
    assert (demo.space, demo.trials, demo.search_epochs, demo.final_image_size) == ("demo", 4, 3, 64)
    assert cpu.budget_s is None and "none: the machine-sized defaults" in render_plan(cpu, None, CPU)
    json.dumps(cpu.to_dict())  # logged as plan.json
    # apply sets only what the user left unset, for either step
    search = SearchOptions(dataset="brain_mri", trials=3)
    assert set(apply(cpu, search)) == {"space", "epochs", "image_size", "pruner", "class_weights"}
    assert (search.space, search.trials, search.epochs, search.image_size) == ("cnn_cpu", 3, 8, 64)
    train = TrainOptions(image_size=96)
    apply(with_given(default_plan(CPU, "brain_mri"), {"ensemble": 2}), train)
    assert (train.epochs, train.image_size, train.ensemble, train.class_weights) == (30, 96, 2, True)


def test_medtune_gpus_overrides_detection(monkeypatch):
    monkeypatch.setenv("MEDTUNE_GPUS", "2")
    MachineFingerprint.detect.cache_clear()
    try:
        assert MachineFingerprint.detect().gpus == 2
    finally:
        MachineFingerprint.detect.cache_clear()


def test_re_planning_after_the_search_keeps_the_users_values():
    from medtune.planning.rules import replan_final

    plan = make_plan(BRAIN, CPU, 3600)
    faster, measured = replan_final(plan, [40.0, 20.0, 20.0], [160, 160, 160], None, plan.final_s)
    assert measured == pytest.approx(21.0) and faster.final_epochs * faster.ensemble > plan.final_epochs
    assert "re-planned after the search" in faster.reasons["final_epochs"]
    fixed = make_plan(BRAIN, CPU, 3600, {"final_epochs": 5, "ensemble": 1})
    kept, _ = replan_final(fixed, [40.0, 20.0, 20.0], [160, 160, 160], None, fixed.final_s)
    assert (kept.final_epochs, kept.ensemble) == (5, 1)


def test_fingerprint_from_a_split_report_and_image_stats(tmp_path):
    from PIL import Image

    paths = []
    for i in range(6):
        rgb = np.zeros((40 + i, 60, 3), np.uint8)
        rgb[..., 0] = 200 if i % 2 else 0  # odd images are red (colour), even ones black (grey)
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rgb).save(paths[-1])
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "grey.png")
    stats = image_stats([*paths, str(tmp_path / "grey.png"), str(tmp_path / "missing.png")])
    assert stats["sampled"] == 7 and stats["median_side"] == 42 and stats["colour_fraction"] == pytest.approx(3 / 7)
    report = {
        "counts": {"train": {"a": 10, "b": 30}, "val": {"a": 2, "b": 6}, "test": {"a": 3, "b": 5}},
        "removed_duplicates": [{"path": "x"}] * 4,
        "label_conflicts": [{"path": "y"}] * 2,
        "conflicted": 2,
        "test_dropped_duplicates_of_train": 1,
    }
    fp = DataFingerprint.from_split(report, stats)
    assert (fp.n_train, fp.n_val, fp.n_test, fp.imbalance_ratio) == (40, 8, 8, 3.0)
    assert (fp.duplicates_removed, fp.label_conflicts, fp.test_duplicates_dropped) == (4, 2, 1)
    assert json.loads(json.dumps(fp.to_dict()))["imbalance_ratio"] == 3.0


def test_machine_detection_reads_this_machine():
    machine = MachineFingerprint.detect()
    assert machine.cpu_cores >= 1 and machine.memory_gib > 0 and machine.gpus >= 0


def test_final_training_is_re_planned_from_a_measured_epoch_time():
    """After the search, rule 6 runs again with the epoch time it measured: faster epochs buy more."""
    planned = make_plan(BRAIN, CPU, 60 * 60)
    slow = plan_final(planned.final_s, 60.0)
    fast = plan_final(planned.final_s, 30.0)
    assert fast[0] * fast[1] > slow[0] * slow[1]
    one = plan_final(planned.final_s, 30.0, {"ensemble": 1})
    assert one[0] == 1 and one[1] > slow[1]
    assert plan_final(600, 30.0, {"final_epochs": 5})[:2] == (1, 5)


def test_early_stopping_never_cuts_the_first_half_of_a_cosine_schedule():
    from medtune.planning.rules import PATIENCE, early_stopping_patience

    assert early_stopping_patience(38, "constant") == PATIENCE  # ReduceLROnPlateau works under it
    assert early_stopping_patience(38, "cosine") == 19  # the 2-hour run's members were cut at 26 and 28 of 38
    assert early_stopping_patience(9, "cosine") == PATIENCE  # short runs keep the usual patience


def test_a_short_cpu_budget_trains_the_first_recipe_instead_of_searching():
    """Rule 1: under 45 minutes on CPU, one probe trial of the recipe, the rest to final training."""
    from medtune.planning.rules import FIRST_RECIPE, PROBE_EPOCHS, RECIPE_ONLY_BUDGET_S

    short = make_plan(BRAIN, CPU, 30 * 60)
    assert short.recipe == FIRST_RECIPE and short.trials == 1 and short.search_epochs == PROBE_EPOCHS
    assert short.search_image_sizes == (short.final_image_size,)  # the probe times an epoch at the final size
    assert short.search_s < 0.15 * 30 * 60 and short.final_s == pytest.approx(30 * 60 - short.search_s)
    assert short.plateau == 0 and short.pruner is None
    assert "none: one trial of the lite0_whole recipe" in render_plan(short, BRAIN, CPU)
    # a longer budget, a GPU, an engine without warm starts, or any search value the user gives: a search
    assert make_plan(BRAIN, CPU, RECIPE_ONLY_BUDGET_S).recipe is None
    assert make_plan(BRAIN, GPU, 30 * 60).recipe is None
    assert make_plan(BRAIN, CPU, 30 * 60, can_warm_start=False).recipe is None
    for given in ({"trials": 3}, {"space": "auto_cpu"}, {"search_image_sizes": (96,)}, {"search_epochs": 2}):
        plan = make_plan(BRAIN, CPU, 30 * 60, given)
        assert plan.recipe is None and plan.search_s == pytest.approx(30 * 60 * 0.4), given


def test_members_after_the_first_are_re_planned_from_its_measured_epochs():
    from medtune.planning.rules import MAX_FINAL_EPOCHS, MIN_FINAL_EPOCHS, member_epochs

    # COVID, 30 minutes: planned 3 x 19 from the search's 21 s epochs; member 0 measured 10 s
    assert member_epochs(900, 2, 10.0) == (450 - FIT_OVERHEAD_S) // 10 == 43
    assert member_epochs(900, 2, 1.0) == MAX_FINAL_EPOCHS
    assert member_epochs(30, 2, 60.0) == MIN_FINAL_EPOCHS  # never below the floor


def test_the_steady_epoch_leaves_out_each_fits_first_epoch():
    from medtune.planning.rules import steady_epoch_seconds

    # the brain_mri probe: a head epoch, then one fine-tuning epoch that also compiled its stage
    assert steady_epoch_seconds([50.0, 115.0], [160, 160], [1, 2]) == 115.0 - FIRST_EPOCH_TRACE_S
    # COVID's rungs: one epoch per rung on 420 images
    assert steady_epoch_seconds([9.0, 14.0, 21.0], [80, 128, 160], [1, 2, 2]) == 21.0 - FIRST_EPOCH_TRACE_S
    assert steady_epoch_seconds([9.0, 14.0], [80, 128], [1, 2]) == 7.0  # mostly tracing: never below half
    # a final member: the later epochs of the last stage
    assert steady_epoch_seconds([50.0, 115.0, 93.0, 95.0, 91.0], [160] * 5, [1, 2, 2, 2, 2]) == 93.0
    assert steady_epoch_seconds([30.0, 31.0], [64]) == 31.0  # one size logged for the trial


SMALL_DATA = data({"covid": 210, "normal": 210}, median_side=299)  # a few hundred training images


def test_small_datasets_cross_validate_one_member_per_fold():
    from medtune.planning.rules import FOLDS, replan_final

    plan = make_plan(SMALL_DATA, CPU, 30 * 60)
    assert (plan.folds, plan.ensemble) == (FOLDS, FOLDS) and plan.final_epochs >= 10
    assert (
        "5-fold cross-validation" in plan.reasons["folds"] and plan.reasons["ensemble"] == "rule 8: one member per fold"
    )
    assert "5-fold cross-validation, 5 x" in render_plan(plan, SMALL_DATA, CPU)
    # each member trains on 4 of the 5 folds of the pooled training and validation images, within the budget
    pool = (SMALL_DATA.n_train + SMALL_DATA.n_val) * 4 // 5
    member = FIT_OVERHEAD_S + plan.final_epochs * epoch_seconds(pool, plan.final_image_size, CPU)
    assert FOLDS * member + evaluation_reserve(plan.final_s) <= plan.final_s * 1.01
    # re-planned from a measured epoch: still one member per fold
    replanned, _ = replan_final(plan, [30.0, 9.0, 9.0], [plan.final_image_size] * 3, None, plan.final_s)
    assert (replanned.folds, replanned.ensemble) == (FOLDS, FOLDS) and replanned.final_epochs != plan.final_epochs


def test_cross_validation_only_where_it_is_small_affordable_and_not_overridden():
    assert make_plan(BRAIN, CPU, 30 * 60).folds == 0
    assert "enough for a validation split" in make_plan(BRAIN, CPU, 30 * 60).reasons["folds"]
    short = make_plan(SMALL_DATA, CPU, 6 * 60)  # five members would get under 10 epochs each
    assert short.folds == 0 and "under 10" in short.reasons["folds"]
    rare = make_plan(data({"a": 300, "b": 4}, median_side=299), CPU, 30 * 60)
    assert rare.folds == 0 and "fewer than 5 training images" in rare.reasons["folds"]
    assert make_plan(SMALL_DATA, CPU, 30 * 60, {"ensemble": 2}).folds == 0  # the user's ensemble wins
    given = make_plan(BRAIN, CPU, 30 * 60, {"folds": 3})
    assert (given.folds, given.ensemble, given.reasons["folds"]) == (3, 3, "given")
