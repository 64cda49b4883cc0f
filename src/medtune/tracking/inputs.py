"""Dataset inputs: the split's manifest linked to the runs that read it (MLflow's dataset tracking)."""

from __future__ import annotations

import mlflow
import pandas as pd


def log_manifest(manifest: pd.DataFrame, root: str, dataset: str, context: str) -> None:
    """Log ``manifest`` (one row per image, ``label`` its target) as an input of the active run."""
    ds = mlflow.data.from_pandas(manifest, source=str(root), name=f"{dataset}-manifest", targets="label")
    mlflow.log_input(ds, context=context)
