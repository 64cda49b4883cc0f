"""Defaults sized from the machine: one plan for ``main`` and for the separate steps.

Every option a user leaves unset (``auto``) takes its value from :func:`plan_defaults`, a pure
function of the machine and the dataset, so the same command does the same thing whichever
route runs it, and a later "plan from a fingerprint" can replace this one function.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class Machine:
    """What the defaults depend on."""

    gpus: int = 0
    cores: int = 1

    def describe(self) -> str:
        return f"{self.gpus} GPU(s), {self.cores} CPU cores" if self.gpus else f"CPU only, {self.cores} cores"


@dataclass(frozen=True)
class Plan:
    """Defaults of the search and of final training."""

    space: str
    trials: int
    epochs: int  # per search trial
    image_size: int  # search
    final_epochs: int
    final_image_size: int
    pruner: str = "median"

    def describe(self) -> str:
        return (
            f"space {self.space}, {self.trials} trials x {self.epochs} epochs at {self.image_size} px, "
            f"then {self.final_epochs} epochs at {self.final_image_size} px"
        )


def plan_defaults(machine: Machine, dataset: str) -> Plan:
    """The defaults for ``dataset`` on ``machine``.

    * ``synthetic`` (the offline demo): the small ``demo`` space, sized so the whole pipeline
      takes minutes on 2 CPU cores.
    * CPU only: ``cnn_cpu`` (16-32 first-block filters, 3x3 kernels; the full ``cnn`` space holds
      configurations that take over 15 minutes per epoch on 2 cores) and ASHA pruning, as in the
      measured brain_mri run (README, Performance); more trials with more cores.
    * GPU: the full ``cnn`` space, more trials and epochs.
    """
    if dataset == "synthetic":
        return Plan(space="demo", trials=4, epochs=3, image_size=48, final_epochs=12, final_image_size=64)
    if machine.gpus:
        return Plan(space="cnn", trials=30, epochs=10, image_size=64, final_epochs=50, final_image_size=128)
    trials = 10 if machine.cores < 8 else 20
    return Plan(
        space="cnn_cpu", trials=trials, epochs=8, image_size=64, final_epochs=30, final_image_size=128, pruner="asha"
    )


@functools.lru_cache(maxsize=1)
def detect_machine() -> Machine:
    """GPUs TensorFlow sees (``$MEDTUNE_GPUS`` overrides, e.g. 0 to plan for CPU) and usable CPU cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = os.environ.get("MEDTUNE_GPUS", "").strip()
    if env.isdigit():
        return Machine(gpus=int(env), cores=cores)
    import tensorflow as tf

    return Machine(gpus=len(tf.config.list_physical_devices("GPU")), cores=cores)


def current_plan(dataset: str) -> Plan:
    """:func:`plan_defaults` for this machine and ``dataset``."""
    return plan_defaults(detect_machine(), dataset)


def fill(options, dataset: str, fields: dict[str, str]):
    """``options`` (a dataclass) with each field in ``fields`` that is None set from the plan's attribute.

    Args:
        options: e.g. a ``SearchOptions``; changed in place and returned.
        dataset: the dataset the plan is for.
        fields: option field -> :class:`Plan` attribute, e.g. ``{"epochs": "final_epochs"}``.
    """
    missing = {f: a for f, a in fields.items() if getattr(options, f) is None}
    if missing:
        plan = current_plan(dataset)
        for field_name, attr in missing.items():
            setattr(options, field_name, getattr(plan, attr))
        log.info(
            "Defaults for %s on this machine (%s): %s",
            dataset,
            detect_machine().describe(),
            ", ".join(f"{f}={getattr(options, f)}" for f in missing),
        )
    return options
