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
   the custom CNN: ``auto_cpu`` on CPU (cnn_cpu-sized custom CNNs), ``auto_gpu`` with a GPU.
3. **Image sizes.** The final size is the median image side, capped by the machine (CPU: 160 px,
   128 under 20 minutes; GPU: 224) and floored at 64. The search climbs rungs of
   1/2, 3/4 and 1 of it (multiples of 16), so promising trials continue at larger sizes.
4. **Cost model.** An epoch costs ``n_train x (size/128)^2 x`` seconds per image at 128 px
   (measured per backbone kind, scaled by cores; a GPU is ``GPU_SPEEDUP`` faster).
5. **Trials and epochs.** Search epochs per trial: 3 rungs x ``EPOCHS_PER_RUNG``; trials: what
   the search budget pays for when pruning stops half of the rung-1 trials, at least
   ``MIN_TRIALS``.
6. **Final training and ensemble.** Final epochs: what the final budget pays for, between
   ``MIN_FINAL_EPOCHS`` and ``MAX_FINAL_EPOCHS``; an ensemble of k members when k members still
   get ``ENSEMBLE_MIN_EPOCHS`` each (two members) or two more (three members).
7. **Batch and class weights.** Batch 32 on CPU, 64 on a GPU (128 with 40 GiB or more); balanced
   class weights when the imbalance ratio exceeds 1.5; stronger augmentation under 200 images per
   class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from medtune.planning.fingerprint import DataFingerprint, MachineFingerprint

__all__ = ["Plan", "make_plan", "member_epochs", "plan_final", "render_plan", "steady_epoch_seconds"]

SEARCH_SHARE = 0.4
RECIPE_ONLY_BUDGET_S = 45 * 60  # on CPU, below it: the first recipe only, the whole budget to final training
FIRST_RECIPE = "lite0_whole"  # the plain Keras fine-tune of the brief (planning.recipes)
PROBE_EPOCHS = 2  # the recipe-only trial: the head epoch, then one fine-tuning epoch (the one timed)
# 2 cores, brain_mri: the custom CNN (cnn_cpu sizes, 2026-11-30); Lite0 fine-tuning (2026-12-01: steady
# epochs of 90-98 s at 160 px on 3,880 images; another session's machine took 48-55 s). The final training
# is re-planned from measured epochs, so these only size the search and the first guess
CPU_SECONDS_PER_IMAGE_128 = {"custom": 0.0145, "efficientnet_lite0": 0.0125}
REFERENCE_CORES = 2
GPU_SPEEDUP = 25.0
EPOCHS_PER_RUNG = 1
MIN_TRIALS, MAX_TRIALS = 4, 60
MIN_FINAL_EPOCHS, MAX_FINAL_EPOCHS = 4, 60
# per member of two; three members need two more each. Measured at 30 minutes on brain_mri: two members
# of 7 and 9 epochs (val macro-F1 0.975, test 0.958) lost to one of 12 (0.981, 0.964)
ENSEMBLE_MIN_EPOCHS = 10
SMALL_BUDGET_S = 20 * 60  # under it, CPU plans cap images at 128 px instead of 160
LARGE_BUDGET_S = 90 * 60  # from it, CPU plans cap images at 192 px (still under Lite0's native 224)
FIT_OVERHEAD_S = 20.0  # building a model and tracing its graphs, per fit (each rung, each member)
EPOCH_OVERHEAD_S = 2.0  # per epoch: precise BatchNorm, validation set-up, logging
EVALUATION_S = 60.0  # after final training: test set, Grad-CAM, model card, registration
DEFAULT_BUDGET_S = 2 * 3600  # a plan always has a budget; `main` without one plans for 2 hours


@dataclass
class Plan:
    budget_s: float
    search_s: float
    final_s: float
    space: str
    rungs: tuple[int, ...]  # search image sizes, smallest first
    search_epochs: int
    trials: int
    batch_size: int
    image_size: int  # final training
    epochs: int  # final training, per ensemble member
    ensemble: int
    class_weights: bool
    augment: float
    recipe: str | None = None  # rule 1: no search, one trial of this recipe
    reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _round16(x: float) -> int:
    return max(32, int(round(x / 16)) * 16)


def make_plan(
    data: DataFingerprint,
    machine: MachineFingerprint,
    budget_s: float | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    can_warm_start: bool = True,
) -> Plan:
    """Rules 1-7 on the fingerprints; ``overrides`` (the user's own values) win over every rule.

    ``can_warm_start``: whether the engine queues recipes (Optuna); without it rule 1 always searches.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    why: dict[str, str] = {}
    budget = float(budget_s or DEFAULT_BUDGET_S)
    why["budget_s"] = "given" if budget_s else f"no budget given: planned for {DEFAULT_BUDGET_S // 60} minutes"
    search_s, final_s = budget * SEARCH_SHARE, budget * (1 - SEARCH_SHARE)
    why["search_s"] = f"rule 1: {SEARCH_SHARE:.0%} of the budget"

    gpu = machine.gpus > 0
    space = given.get("space") or ("auto_gpu" if gpu else "auto_cpu")
    why["space"] = "given" if "space" in given else f"rule 2: {'GPU' if gpu else 'CPU'} machine"

    cap = 224 if gpu else (128 if budget < SMALL_BUDGET_S else 160 if budget < LARGE_BUDGET_S else 192)
    native = data.median_side or cap
    image_size = int(given.get("image_size") or max(64, min(cap, _round16(native))))
    why["image_size"] = (
        "given"
        if "image_size" in given
        else (f"rule 3: median side {data.median_side} px, capped at {cap} px on this machine and budget")
    )
    searched = ("space", "trials", "search_epochs", "search_image_size")
    recipe = (
        FIRST_RECIPE
        if not gpu and budget < RECIPE_ONLY_BUDGET_S and can_warm_start and not any(k in given for k in searched)
        else None
    )
    if recipe:
        probe = PROBE_EPOCHS * epoch_seconds(max(1, data.n_train), image_size, machine) + 2 * FIT_OVERHEAD_S
        search_s, final_s = probe, budget - probe
        why["search_s"] = (
            f"rule 1: under {RECIPE_ONLY_BUDGET_S // 60} minutes on CPU no search, one trial of the "
            f"{recipe} recipe ({PROBE_EPOCHS} epochs at the final size)"
        )
        why["recipe"] = why["search_s"]
    rungs = tuple(sorted({_round16(image_size / 2), _round16(image_size * 3 / 4), image_size}))
    if "search_image_size" in given or recipe:
        rungs = (int(given.get("search_image_size") or image_size),)
    why["rungs"] = (
        "given (one size)"
        if "search_image_size" in given
        else "rule 1: the final size"
        if recipe
        else "rule 3: 1/2, 3/4 and 1 of the final size"
    )

    search_epochs = int(given.get("search_epochs") or (PROBE_EPOCHS if recipe else len(rungs) * EPOCHS_PER_RUNG))
    why["search_epochs"] = "given" if "search_epochs" in given else "rule 1" if recipe else "rule 5: one epoch per rung"
    n_train = max(1, data.n_train)
    # With ASHA-like pruning at each rung, about half the trials stop after the first rung.
    per_epoch = [epoch_seconds(n_train, s, machine) for s in rungs]
    epochs_per_rung = max(1, search_epochs // len(rungs))
    full_trial = sum(e * epochs_per_rung + FIT_OVERHEAD_S for e in per_epoch)
    expected_trial = 0.5 * full_trial + 0.5 * (per_epoch[0] * epochs_per_rung + FIT_OVERHEAD_S)
    trials = int(given.get("trials") or min(MAX_TRIALS, max(MIN_TRIALS, math.floor(search_s / expected_trial))))
    why["trials"] = (
        "given"
        if "trials" in given
        else (f"rule 5: {search_s / 60:.0f} min of search at about {expected_trial / 60:.1f} min per trial")
    )
    if recipe:
        trials, why["trials"] = 1, "rule 1: the recipe only"

    final_epoch = epoch_seconds(n_train, image_size, machine)  # final training fits the training images
    ensemble, epochs, reasons = plan_final(final_s, final_epoch, given)
    why.update(reasons)

    batch = int(given.get("batch_size") or (32 if not gpu else (128 if machine.gpu_memory_gib >= 40 else 64)))
    why["batch_size"] = "given" if "batch_size" in given else "rule 7"
    class_weights = bool(given["class_weights"]) if "class_weights" in given else data.imbalance_ratio > 1.5
    why["class_weights"] = (
        "given" if "class_weights" in given else f"rule 7: imbalance ratio {data.imbalance_ratio:.1f}"
    )
    augment = float(given.get("augment") or (0.3 if data.smallest_class < 200 else 0.2))
    why["augment"] = "given" if "augment" in given else f"rule 7: smallest class {data.smallest_class} images"
    return Plan(
        budget_s=budget,
        search_s=search_s,
        final_s=final_s,
        space=space,
        rungs=rungs,
        search_epochs=search_epochs,
        trials=trials,
        batch_size=batch,
        image_size=image_size,
        epochs=epochs,
        ensemble=ensemble,
        class_weights=class_weights,
        augment=augment,
        recipe=recipe,
        reasons=why,
    )


def plan_final(final_s: float, epoch_s: float, given: Mapping[str, Any] | None = None) -> tuple[int, int, dict]:
    """Rule 6: ensemble members and epochs per member that ``final_s`` seconds pay for at ``epoch_s`` per epoch.

    Used twice: in the plan (``epoch_s`` from the cost model) and after the search, with the epoch
    time the search measured at the final size. Returns ``(ensemble, epochs, reasons)``.
    """
    given = {k: v for k, v in (given or {}).items() if v is not None}
    training_s = max(0.0, final_s - EVALUATION_S)

    def per_member(k: int) -> int:  # epochs each of k members can afford
        return max(0, math.floor((training_s / k - FIT_OVERHEAD_S) / epoch_s))

    affordable = per_member(1)
    ensemble = int(
        given.get("ensemble")
        or next((k for k in (3, 2) if per_member(k) >= (ENSEMBLE_MIN_EPOCHS + 2 if k == 3 else ENSEMBLE_MIN_EPOCHS)), 1)
    )
    epochs = int(given.get("epochs") or max(MIN_FINAL_EPOCHS, min(MAX_FINAL_EPOCHS, per_member(ensemble))))
    why = {
        "ensemble": "given"
        if "ensemble" in given
        else (
            f"rule 6: {affordable} final epochs of {epoch_s:.0f} s affordable; {ensemble} member(s) of "
            f">= {ENSEMBLE_MIN_EPOCHS} epochs"
        ),
        "epochs": "given" if "epochs" in given else f"rule 6: {final_s / 60:.0f} min of final training",
    }
    return ensemble, epochs, why


def steady_epoch_seconds(
    seconds: list[float], sizes: list[float] | None = None, stages: list[float] | None = None
) -> float:
    """The time of one steady epoch at the last image size and stage of a trial's ``epoch_seconds``.

    The first epoch of each fit (a new rung, a new stage) also traces its graphs: the median of
    the later epochs at that size and stage; with only that first epoch, it less ``FIT_OVERHEAD_S``
    (at least half of it). The probe trial's one fine-tuning epoch took 115 s on brain_mri, the
    steady ones 90-98 s.
    """
    if not sizes or len(sizes) != len(seconds):  # one size for the whole fit
        sizes = [sizes[-1] if sizes else 0] * len(seconds)
    stages = stages if stages and len(stages) == len(seconds) else [0.0] * len(seconds)
    last = [t for t, size, st in zip(seconds, sizes, stages, strict=False) if (size, st) == (sizes[-1], stages[-1])]
    if len(last) > 1:
        return float(sorted(last[1:])[len(last[1:]) // 2])
    return max(seconds[-1] - FIT_OVERHEAD_S, seconds[-1] / 2)


def member_epochs(remaining_s: float, members: int, epoch_s: float) -> int:
    """Rule 6 during final training: epochs for each of ``members`` still to train in ``remaining_s``
    (evaluation's reserve already taken out), at a measured ``epoch_s``."""
    affordable = math.floor((max(0.0, remaining_s) / max(1, members) - FIT_OVERHEAD_S) / max(epoch_s, 1e-3))
    return max(MIN_FINAL_EPOCHS, min(MAX_FINAL_EPOCHS, affordable))


def render_plan(plan: Plan, data: DataFingerprint, machine: MachineFingerprint) -> str:
    """The short table printed before work starts."""
    rows = [
        (
            "data",
            f"{data.n_train} train / {data.n_val} val / {data.n_test} test images, {len(data.classes)} classes, "
            f"imbalance {data.imbalance_ratio:.1f}, median side {data.median_side} px, "
            f"{'colour' if data.colour_fraction > 0.5 else 'grey'}",
        ),
        ("machine", f"{machine.gpus} GPU(s), {machine.cpu_cores} cores, {machine.memory_gib:.0f} GiB"),
        ("budget", f"{plan.budget_s / 60:.0f} min: search {plan.search_s / 60:.0f}, final {plan.final_s / 60:.0f}"),
        (
            "search",
            f"none: one trial of the {plan.recipe} recipe, {plan.search_epochs} epochs at {plan.rungs[-1]} px, "
            f"batch {plan.batch_size}"
            if plan.recipe
            else f"{plan.trials} trials of {plan.search_epochs} epochs at {'/'.join(map(str, plan.rungs))} px, "
            f"space {plan.space}, batch {plan.batch_size}",
        ),
        (
            "final",
            f"{plan.ensemble} x {plan.epochs} epochs at {plan.image_size} px, class weights "
            f"{'on' if plan.class_weights else 'off'}",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
