"""The plan: what a budgeted ``main`` will do, derived from the fingerprints by documented rules.

Every value comes with the rule that set it (``Plan.reasons``), a value the user gave overrides
the rule, and the whole plan is logged as ``plan.json`` and printed as a short table before any
training. The rules (docs/planning.md gives the measurements behind the constants):

1. **Budget split.** The search gets ``SEARCH_SHARE`` of the budget, final training the rest.
   On CPU under ``RECIPE_ONLY_BUDGET_S`` the search cannot beat its first recipe (measured at 30
   minutes on brain_mri), so there is no search: one trial of ``FIRST_RECIPE`` (its head epoch
   and one fine-tuning epoch at the final size) checks that it trains and measures the epoch
   time, and final training gets the rest.
2. **Space.** Always the pretrained EfficientNet-Lite0 (its ImageNet weights are offline) beside
   the custom CNN: ``auto_cpu`` on CPU (cnn_cpu-sized custom CNNs), ``auto_gpu`` with a GPU, which
   also offers the bigger Lite1 and Lite2 (1.25-1.5x Lite0's cost per image; on CPU no fine-tuned
   gain has been measured to pay for it yet, so the CPU space keeps Lite0).
3. **Image sizes.** The final size is the median image side, capped by the machine (CPU: 160 px,
   128 under 20 minutes; GPU: 224) and floored at 64. Small images (median side under
   ``SMALL_IMAGE_SIDE``) are seen up-sampled by the pretrained backbone, at the largest of
   ``UPSAMPLED_SIZES`` (within the cap) where final training still affords
   ``MIN_UPSAMPLED_EPOCHS``: ImageNet features need more pixels than a thumbnail has (on 28 px
   images, pretrained backbones up-sampled to 128-224 px did clearly better than at native size,
   MedMNIST+ benchmark, Doerrich et al. 2024). The search climbs rungs of
   1/2, 3/4 and 1 of it (multiples of 16), so promising trials continue at larger sizes.
4. **Cost model.** An epoch costs ``n_train x (size/128)^2 x`` seconds per image at 128 px
   (measured per backbone kind, scaled by cores; a GPU is ``GPU_SPEEDUP`` faster).
5. **Trials and epochs.** Search epochs per trial: 3 rungs x ``EPOCHS_PER_RUNG``. The time ends
   the search (up to ``MAX_BUDGETED_TRIALS``); the trials it is expected to pay for (pruning stops
   half of the rung-1 trials) set the plateau stop: a third of them, at least ``PLATEAU_MIN``.
6. **Final training and ensemble.** Final epochs: what the final budget pays for, between
   ``MIN_FINAL_EPOCHS`` and ``MAX_FINAL_EPOCHS``; an ensemble of k members when k members still
   get ``ENSEMBLE_MIN_EPOCHS`` each (two members) or two more (three members).
7. **Class weights.** Balanced class weights (near 1 on balanced data).
8. **Small datasets.** Under ``SMALL_DATA_IMAGES`` training and validation images, a validation
   split is too small to stop on, choose the flip or calibrate with: final training is ``FOLDS``-fold
   cross-validation of the pooled images (nnU-Net's five folds), one member per fold, stopped on
   its own fold, the members averaged, the flip and the temperature chosen on the out-of-fold
   predictions; when each of the ``FOLDS`` members still affords ``ENSEMBLE_MIN_EPOCHS`` epochs
   (and every class has ``FOLDS`` training images), else rule 6.

Without a budget (:func:`default_plan`) the plan is the machine-sized defaults of the separate
steps: the offline ``synthetic`` demo gets the minutes-long ``demo`` space; a CPU the ``cnn_cpu``
space with ASHA pruning (more trials with more cores); a GPU the full ``cnn`` space.
:func:`apply` sets every option the user left unset (None) from the plan, for any step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from medtune.planning.fingerprint import DataFingerprint, MachineFingerprint

__all__ = [
    "Plan",
    "apply",
    "default_plan",
    "replan_final",
    "with_given",
    "evaluation_reserve",
    "make_plan",
    "member_epochs",
    "plan_final",
    "render_plan",
    "steady_epoch_seconds",
]

SEARCH_SHARE = 0.4
RECIPE_ONLY_BUDGET_S = 45 * 60  # on CPU, below it: the first recipe only, the whole budget to final training
FIRST_RECIPE = "lite0_whole"  # the plain Keras fine-tune of the brief (planning.recipes)
PROBE_EPOCHS = 2  # the recipe-only trial: the head epoch, then one fine-tuning epoch (the one timed)
# 2 cores, brain_mri: the custom CNN (cnn_cpu sizes, 2026-11-30); Lite0 fine-tuning with its BatchNorm
# folded (bench/epoch_speed.py, 2026-12-06: medtune's stage-2 epoch at 129 images/s at 128 px and 82 at
# 160 px, validation included; 0.0125 before the fold). The final training is re-planned from measured
# epochs, so these only size the search and the first guess
CPU_SECONDS_PER_IMAGE_128 = {"custom": 0.0145, "efficientnet_lite0": 0.0065}
REFERENCE_CORES = 2
GPU_SPEEDUP = 25.0
EPOCHS_PER_RUNG = 1
MIN_TRIALS, MAX_TRIALS = 4, 60
MIN_FINAL_EPOCHS, MAX_FINAL_EPOCHS = 4, 60
# per member of two; three members need two more each. Measured at 30 minutes on brain_mri: two members
# of 7 and 9 epochs (val macro-F1 0.975, test 0.958) lost to one of 12 (0.981, 0.964)
ENSEMBLE_MIN_EPOCHS = 10
SMALL_IMAGE_SIDE = 64  # a median side under it: rule 3 up-samples
UPSAMPLED_SIZES = (128, 96, 64)  # largest first
MIN_UPSAMPLED_EPOCHS = 12  # final epochs an up-sampled size must still afford
SMALL_BUDGET_S = 20 * 60  # under it, CPU plans cap images at 128 px instead of 160
LARGE_BUDGET_S = 90 * 60  # from it, CPU plans cap images at 192 px (still under Lite0's native 224)
FIT_OVERHEAD_S = 20.0  # building a model and tracing its graphs, per fit (each rung, each member)
# what tracing adds to the first epoch of a fit (stage 2 of Lite0 at 160 px, 2026-12-06, folded:
# 57 s against 47 s steady; the probe's one fine-tuning epoch 51 s)
FIRST_EPOCH_TRACE_S = 10.0
EPOCH_OVERHEAD_S = 2.0  # per epoch: precise BatchNorm, validation set-up, logging
MAX_BUDGETED_TRIALS = 200  # with a budget and no trial count, the time ends the search
PLATEAU_MIN = 6  # finished trials without improvement before a planned search stops early
SMALL_DATA_IMAGES = 1000  # training + validation images under which rule 8 cross-validates
FOLDS = 5


def evaluation_reserve(final_s: float) -> float:
    """Seconds kept after final training for the test set, Grad-CAM, the model card and registration."""
    return min(max(30.0, 0.08 * final_s), 240.0)


@dataclass
class Plan:
    """What a run will do; every field is applied (:func:`apply`), none is only printed."""

    space: str
    trials: int  # the cap; with a budget the time ends the search first
    search_epochs: int  # per trial, over all its image sizes
    search_image_sizes: tuple[int, ...]  # smallest first; more than one: resolution rungs
    final_epochs: int  # per ensemble member
    final_image_size: int
    ensemble: int = 1
    folds: int = 0  # rule 8: k-fold final training, one member per fold (0: the validation split)
    class_weights: bool = True
    pruner: str | None = None  # None: the search step's own choice
    plateau: int = 0  # finished trials without improvement that stop the search (0: never)
    budget_s: float | None = None
    search_s: float | None = None  # the search's share of the budget
    final_s: float | None = None
    recipe: str | None = None  # rule 1: no search, one trial of this recipe
    reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_plan(machine: MachineFingerprint, dataset: str) -> Plan:
    """The plan without a budget: machine-sized defaults (the module's docstring)."""
    why = "no budget: the machine-sized defaults"
    if dataset == "synthetic":
        plan = Plan("demo", 4, 3, (48,), 12, 64, pruner="median")
    elif machine.gpus:
        plan = Plan("cnn", 30, 10, (64,), 50, 128, pruner="median")
    else:
        plan = Plan("cnn_cpu", 10 if machine.cpu_cores < 8 else 20, 8, (64,), 30, 128, pruner="asha")
    plan.reasons = {k: why for k in ("space", "trials", "search_epochs", "search_image_sizes", "final_epochs")}
    plan.reasons.update(
        final_image_size=why, ensemble="one model", folds="the validation split", class_weights="rule 7", pruner=why
    )
    return plan


def with_given(plan: Plan, given: Mapping[str, Any]) -> Plan:
    """``plan`` with the user's own values (by :class:`Plan` field name) in place of the rules'."""
    for name, value in given.items():
        if value is not None:
            setattr(plan, name, value)
            plan.reasons[name] = "given"
    if plan.folds > 1:
        plan.ensemble, plan.reasons["ensemble"] = plan.folds, "one member per fold"
    return plan


def replan_final(
    plan: Plan, seconds: list[float], sizes: list[float], stages: list[float] | None, remaining_s: float
) -> tuple[Plan, float]:
    """Rule 6 again after the search, from the best trial's measured ``epoch_seconds`` (with the
    ``image_size`` and ``stage`` of each epoch): members and epochs for ``remaining_s``. Values the
    user gave stay. Returns the new plan and the measured epoch time at the final size."""
    steady = steady_epoch_seconds(seconds, sizes, stages)
    measured = max(steady, 1.0) * (plan.final_image_size / sizes[-1]) ** 2 * 1.05  # TimeLimit guards the rest
    given = {k: getattr(plan, k) for k in ("ensemble", "final_epochs") if plan.reasons.get(k) == "given"}
    if plan.folds > 1:
        given["ensemble"] = plan.folds
    ensemble, epochs, why = plan_final(remaining_s, measured, given)
    if plan.folds > 1:
        why["ensemble"] = plan.reasons["ensemble"]
    reasons = {
        k: f"{v} (re-planned after the search: {measured:.0f} s per epoch)" for k, v in why.items() if v != "given"
    }
    new = replace(plan, ensemble=ensemble, final_epochs=epochs, reasons={**plan.reasons, **reasons})
    return new, measured


# option field -> plan field, per options class: what `apply` sets when the user left it unset
APPLIED = {
    "SearchOptions": {
        "space": "space",
        "trials": "trials",
        "epochs": "search_epochs",
        "image_size": "search_image_sizes",
        "pruner": "pruner",
        "class_weights": "class_weights",
    },
    "TrainOptions": {
        "epochs": "final_epochs",
        "image_size": "final_image_size",
        "ensemble": "ensemble",
        "folds": "folds",
        "class_weights": "class_weights",
    },
}


def apply(plan: Plan, options) -> list[str]:
    """Set each field of ``options`` (a ``SearchOptions`` or ``TrainOptions``) that is None from ``plan``.

    Returns the names of the fields it set. The search's image sizes set ``image_size`` (the
    largest) and, when there are several, ``rungs``.
    """
    set_now = []
    for field_name, attr in APPLIED[type(options).__name__].items():
        if getattr(options, field_name) is not None:
            continue
        value = getattr(plan, attr)
        if attr == "search_image_sizes":
            value = value[-1]
            if len(plan.search_image_sizes) > 1 and getattr(options, "rungs", None) is None:
                options.rungs = plan.search_image_sizes
        setattr(options, field_name, value)
        set_now.append(field_name)
    return set_now


PATIENCE = 8  # early-stopping patience of a constant learning rate (ReduceLROnPlateau halves it after a third)


def early_stopping_patience(epochs: int, lr_schedule: str) -> int:
    """Final training's early-stopping patience, when the user gives none.

    A cosine schedule gains most in its low-rate tail, so its run is never cut in the first half of
    its planned epochs: stopping there ended 2 of 3 ensemble members of a 2-hour run a quarter
    before their tail (docs/performance.md). A constant rate keeps the usual 8 epochs.
    """
    if lr_schedule == "constant":
        return PATIENCE
    return max(PATIENCE, -(-epochs // 2))


def epoch_seconds(n_images: int, size: int, machine: MachineFingerprint, backbone: str = "efficientnet_lite0") -> float:
    """Rule 4: the expected seconds of one training epoch (validation and re-estimation included)."""
    per_image = CPU_SECONDS_PER_IMAGE_128[backbone] * (size / 128) ** 2
    if machine.gpus:
        per_image /= GPU_SPEEDUP
    else:
        per_image *= REFERENCE_CORES / max(1, machine.cpu_cores)
    return n_images * per_image * 1.2 + EPOCH_OVERHEAD_S  # + validation pass and precise BatchNorm, ~20 %


def _upsampled_size(data: DataFingerprint, machine: MachineFingerprint, cap: int, final_s: float) -> int:
    """Rule 3 for small images: the largest of ``UPSAMPLED_SIZES`` within ``cap`` whose epochs
    ``final_s`` pays ``MIN_UPSAMPLED_EPOCHS`` of (64 px when none)."""
    for size in UPSAMPLED_SIZES:
        epochs = plan_final(final_s, epoch_seconds(max(1, data.n_train), size, machine), {"ensemble": 1})[1]
        if size <= cap and epochs >= MIN_UPSAMPLED_EPOCHS:
            return size
    return UPSAMPLED_SIZES[-1]


def _round16(x: float) -> int:
    return max(32, int(round(x / 16)) * 16)


def make_plan(
    data: DataFingerprint,
    machine: MachineFingerprint,
    budget_s: float,
    overrides: Mapping[str, Any] | None = None,
    *,
    can_warm_start: bool = True,
) -> Plan:
    """Rules 1-7 on the fingerprints for ``budget_s`` seconds; ``overrides`` (the user's own values,
    by :class:`Plan` field name) win over every rule.

    ``can_warm_start``: whether the engine queues recipes (Optuna); without it rule 1 always searches.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    why: dict[str, str] = {"budget_s": "given"}
    budget = float(budget_s)
    search_s, final_s = budget * SEARCH_SHARE, budget * (1 - SEARCH_SHARE)
    why["search_s"] = f"rule 1: {SEARCH_SHARE:.0%} of the budget"

    gpu = machine.gpus > 0
    space = given.get("space") or ("auto_gpu" if gpu else "auto_cpu")
    why["space"] = "given" if "space" in given else f"rule 2: {'GPU' if gpu else 'CPU'} machine"

    searched = ("space", "trials", "search_epochs", "search_image_sizes")
    recipe = (
        FIRST_RECIPE
        if not gpu and budget < RECIPE_ONLY_BUDGET_S and can_warm_start and not any(k in given for k in searched)
        else None
    )
    cap = 224 if gpu else (128 if budget < SMALL_BUDGET_S else 160 if budget < LARGE_BUDGET_S else 192)
    native = data.median_side or cap
    image_size = max(64, min(cap, _round16(native)))
    why["final_image_size"] = (
        f"rule 3: median side {data.median_side} px, capped at {cap} px on this machine and budget"
    )
    if data.median_side and data.median_side < SMALL_IMAGE_SIDE:
        image_size = _upsampled_size(data, machine, cap, budget if recipe else final_s)
        why["final_image_size"] = (
            f"rule 3: small images (median side {data.median_side} px) up-sampled for the pretrained backbone, "
            f"the largest size affording {MIN_UPSAMPLED_EPOCHS} final epochs"
        )
    if "final_image_size" in given:
        image_size, why["final_image_size"] = int(given["final_image_size"]), "given"
    if recipe:
        probe = PROBE_EPOCHS * epoch_seconds(max(1, data.n_train), image_size, machine) + 2 * FIT_OVERHEAD_S
        search_s, final_s = probe, budget - probe
        why["search_s"] = (
            f"rule 1: under {RECIPE_ONLY_BUDGET_S // 60} minutes on CPU no search, one trial of the "
            f"{recipe} recipe ({PROBE_EPOCHS} epochs at the final size)"
        )
        why["recipe"] = why["search_s"]
    why["final_s"] = "the rest of the budget"
    sizes = tuple(sorted({_round16(image_size / 2), _round16(image_size * 3 / 4), image_size}))
    if "search_image_sizes" in given or recipe:
        sizes = tuple(given.get("search_image_sizes") or (image_size,))
    why["search_image_sizes"] = (
        "given"
        if "search_image_sizes" in given
        else "rule 1: the final size"
        if recipe
        else "rule 3: 1/2, 3/4 and 1 of the final size"
    )

    search_epochs = int(given.get("search_epochs") or (PROBE_EPOCHS if recipe else len(sizes) * EPOCHS_PER_RUNG))
    why["search_epochs"] = "given" if "search_epochs" in given else "rule 1" if recipe else "rule 5: one epoch per rung"
    n_train = max(1, data.n_train)
    # With ASHA-like pruning at each rung, about half the trials stop after the first rung.
    per_epoch = [epoch_seconds(n_train, s, machine) for s in sizes]
    epochs_per_rung = max(1, search_epochs // len(sizes))
    full_trial = sum(e * epochs_per_rung + FIT_OVERHEAD_S for e in per_epoch)
    expected_trial = 0.5 * full_trial + 0.5 * (per_epoch[0] * epochs_per_rung + FIT_OVERHEAD_S)
    expected = min(MAX_TRIALS, max(MIN_TRIALS, math.floor(search_s / expected_trial)))
    trials = int(given.get("trials") or MAX_BUDGETED_TRIALS)
    why["trials"] = (
        "given"
        if "trials" in given
        else f"rule 5: the time ends the search (about {expected} trials of {expected_trial / 60:.1f} min "
        f"in {search_s / 60:.0f} min)"
    )
    plateau = max(PLATEAU_MIN, expected // 3)
    why["plateau"] = f"rule 5: a third of the {expected} expected trials, at least {PLATEAU_MIN}"
    pruner = given.get("pruner") or ("median" if len(sizes) > 1 else None)
    why["pruner"] = "given" if "pruner" in given else "rule 3: decides at the end of every rung" if pruner else "none"
    if recipe:
        trials, plateau, pruner = 1, 0, given.get("pruner")
        why["trials"] = why["plateau"] = "rule 1: the recipe only"

    final_epoch = epoch_seconds(n_train, image_size, machine)  # final training fits the training images
    ensemble, epochs, reasons = plan_final(final_s, final_epoch, given)
    why.update(reasons)
    folds, why["folds"] = _folds(data, machine, image_size, final_s, given)
    if folds > 1:
        pool = max(1, data.n_train + data.n_val) * (folds - 1) // folds  # each member trains on k-1 folds
        ensemble, epochs, reasons = plan_final(
            final_s, epoch_seconds(pool, image_size, machine), {**given, "ensemble": folds}
        )
        why.update(reasons, ensemble="rule 8: one member per fold")
    class_weights = bool(given.get("class_weights", True))
    why["class_weights"] = (
        "given" if "class_weights" in given else f"rule 7 (imbalance ratio {data.imbalance_ratio:.1f})"
    )
    return Plan(
        space=space,
        trials=trials,
        search_epochs=search_epochs,
        search_image_sizes=sizes,
        final_epochs=epochs,
        final_image_size=image_size,
        ensemble=ensemble,
        folds=folds,
        class_weights=class_weights,
        pruner=pruner,
        plateau=plateau,
        budget_s=budget,
        search_s=search_s,
        final_s=final_s,
        recipe=recipe,
        reasons=why,
    )


def _folds(
    data: DataFingerprint, machine: MachineFingerprint, image_size: int, final_s: float, given: Mapping[str, Any]
) -> tuple[int, str]:
    """Rule 8: the folds of final training (0: the validation split), with the reason."""
    if "folds" in given:
        return int(given["folds"]), "given"
    pool = data.n_train + data.n_val
    if pool >= SMALL_DATA_IMAGES:
        return 0, f"rule 8: {pool} training and validation images, enough for a validation split"
    if "ensemble" in given:
        return 0, "rule 8: an ensemble was given"
    if min(data.train_per_class.values(), default=0) < FOLDS:
        return 0, f"rule 8: a class has fewer than {FOLDS} training images"
    epoch_s = epoch_seconds(max(1, pool * (FOLDS - 1) // FOLDS), image_size, machine)
    affordable = affordable_epochs(final_s, epoch_s, FOLDS)
    if affordable < ENSEMBLE_MIN_EPOCHS:
        return 0, f"rule 8: {FOLDS} folds afford {affordable} epochs each, under {ENSEMBLE_MIN_EPOCHS}"
    return (
        FOLDS,
        f"rule 8: {pool} training and validation images (under {SMALL_DATA_IMAGES}): {FOLDS}-fold cross-validation",
    )


def affordable_epochs(final_s: float, epoch_s: float, members: int) -> int:
    """Epochs each of ``members`` can afford in ``final_s`` seconds at ``epoch_s`` (evaluation's reserve kept)."""
    training_s = max(0.0, final_s - evaluation_reserve(final_s))
    return max(0, math.floor((training_s / members - FIT_OVERHEAD_S) / epoch_s))


def plan_final(final_s: float, epoch_s: float, given: Mapping[str, Any] | None = None) -> tuple[int, int, dict]:
    """Rule 6: ensemble members and epochs per member that ``final_s`` seconds pay for at ``epoch_s`` per epoch.

    Used twice: in the plan (``epoch_s`` from the cost model) and after the search, with the epoch
    time the search measured at the final size. Returns ``(ensemble, epochs, reasons)``.
    """
    given = {k: v for k, v in (given or {}).items() if v is not None}

    def per_member(k: int) -> int:  # epochs each of k members can afford
        return affordable_epochs(final_s, epoch_s, k)

    affordable = per_member(1)
    ensemble = int(
        given.get("ensemble")
        or next((k for k in (3, 2) if per_member(k) >= (ENSEMBLE_MIN_EPOCHS + 2 if k == 3 else ENSEMBLE_MIN_EPOCHS)), 1)
    )
    epochs = int(given.get("final_epochs") or max(MIN_FINAL_EPOCHS, min(MAX_FINAL_EPOCHS, per_member(ensemble))))
    why = {
        "ensemble": "given"
        if "ensemble" in given
        else (
            f"rule 6: {affordable} final epochs of {epoch_s:.0f} s affordable; {ensemble} member(s) of "
            f">= {ENSEMBLE_MIN_EPOCHS} epochs"
        ),
        "final_epochs": "given" if "final_epochs" in given else f"rule 6: {final_s / 60:.0f} min of final training",
    }
    return ensemble, epochs, why


def steady_epoch_seconds(
    seconds: list[float], sizes: list[float] | None = None, stages: list[float] | None = None
) -> float:
    """The time of one steady epoch at the last image size and stage of a trial's ``epoch_seconds``.

    The first epoch of each fit (a new rung, a new stage) also traces its graphs: the median of
    the later epochs at that size and stage; with only that first epoch, it less
    ``FIRST_EPOCH_TRACE_S`` (at least half of it).
    """
    if not sizes or len(sizes) != len(seconds):  # one size for the whole fit
        sizes = [sizes[-1] if sizes else 0] * len(seconds)
    stages = stages if stages and len(stages) == len(seconds) else [0.0] * len(seconds)
    last = [t for t, size, st in zip(seconds, sizes, stages, strict=False) if (size, st) == (sizes[-1], stages[-1])]
    if len(last) > 1:
        return float(sorted(last[1:])[len(last[1:]) // 2])
    return max(seconds[-1] - FIRST_EPOCH_TRACE_S, seconds[-1] / 2)


def member_epochs(remaining_s: float, members: int, epoch_s: float) -> int:
    """Rule 6 during final training: epochs for each of ``members`` still to train in ``remaining_s``
    (evaluation's reserve already taken out), at a measured ``epoch_s``."""
    affordable = math.floor((max(0.0, remaining_s) / max(1, members) - FIT_OVERHEAD_S) / max(epoch_s, 1e-3))
    return max(MIN_FINAL_EPOCHS, min(MAX_FINAL_EPOCHS, affordable))


def render_plan(plan: Plan, data: DataFingerprint | None, machine: MachineFingerprint) -> str:
    """The short table printed before work starts: what will run, nothing else."""
    sizes = "/".join(map(str, plan.search_image_sizes))
    rows = []
    if data is not None:
        rows.append(
            (
                "data",
                f"{data.n_train} train / {data.n_val} val / {data.n_test} test images, {len(data.classes)} classes, "
                f"imbalance {data.imbalance_ratio:.1f}, median side {data.median_side} px, "
                f"{'colour' if data.colour_fraction > 0.5 else 'grey'}",
            )
        )
    rows.append(("machine", f"{machine.describe()}, {machine.memory_gib:.0f} GiB"))
    if plan.budget_s:
        rows.append(
            ("budget", f"{plan.budget_s / 60:.0f} min: search {plan.search_s / 60:.0f}, final {plan.final_s / 60:.0f}")
        )
    else:
        rows.append(("budget", "none: the machine-sized defaults"))
    if plan.recipe:
        search = f"none: one trial of the {plan.recipe} recipe, {plan.search_epochs} epochs at {sizes} px"
    else:
        cap = f"up to {plan.trials} trials (the time ends it)" if plan.budget_s else f"{plan.trials} trials"
        stop = f", plateau stop after {plan.plateau}" if plan.plateau else ""
        search = f"{cap} of {plan.search_epochs} epochs at {sizes} px, space {plan.space}, pruner {plan.pruner}{stop}"
    rows.append(("search", search))
    folds = f"{plan.folds}-fold cross-validation, " if plan.folds > 1 else ""
    rows.append(
        (
            "final",
            f"{folds}{plan.ensemble} x {plan.final_epochs} epochs at {plan.final_image_size} px, class weights "
            f"{'on' if plan.class_weights else 'off'}",
        )
    )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
