"""What a step needs from an earlier step, composed in one place.

``search``, ``train`` and ``evaluate`` read a split; a user who starts one of them on a dataset
never split before expects it to work, so the split step runs first, with its defaults. The
loader (:func:`medtune.steps.data.load_split`) only reads; the composition is here, by name.
"""

from __future__ import annotations

import logging

from medtune import tracking
from medtune.datasets.registry import resolve_dataset

log = logging.getLogger(__name__)


def ensure_split(dataset: str, image_size: int, *, split_run: str | None = None, data_dir: str | None = None) -> None:
    """Run the split step for ``dataset`` when it has no finished split (and no ``split_run`` was named)."""
    from medtune.steps.split import SplitOptions, run_split

    if split_run not in (None, "", "latest"):
        return
    name = resolve_dataset(dataset, data_dir).name
    if tracking.find_runs(name, "split", max_results=1):
        return
    log.info("No split of %s yet: running the split step first", name)
    with tracking.launcher_set_aside():  # the `mlflow run` run belongs to the step the user asked for
        run_split(SplitOptions(dataset=dataset, data_dir=data_dir, image_size=image_size), reuse_run=True)
