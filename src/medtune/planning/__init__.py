"""Self-configuration: fingerprints of the data and the machine, a time budget, and the plan."""

from medtune.planning.budget import Budget, parse_budget
from medtune.planning.fingerprint import DataFingerprint, MachineFingerprint, image_stats
from medtune.planning.rules import Plan, make_plan, render_plan

__all__ = [
    "Budget",
    "DataFingerprint",
    "MachineFingerprint",
    "Plan",
    "image_stats",
    "make_plan",
    "parse_budget",
    "render_plan",
]
