"""Everything medtune records in MLflow; the only package (with ``serving``, which MLflow loads) that imports mlflow.

* ``store``    - where MLflow points, the ``medtune-<dataset>`` experiments, run reads and tags
* ``runs``     - step and pipeline runs, ``mlflow run`` launcher runs, orphaned-run repair
* ``logger``   - ``RunLogger``: params, metrics, tags and artifacts of one run id
* ``console``  - each step's share of the log lines, saved as ``console.log``
* ``inputs``   - the split's manifest as a dataset input of the runs that read it
* ``registry`` - model versions, aliases and the champion gate's reads and writes
* ``lookups``  - a run or model the user named that does not exist: one line, and what exists
"""

from medtune.tracking.console import capture_console, save_console
from medtune.tracking.inputs import log_manifest
from medtune.tracking.logger import MAX_PARAM_LEN, RunLogger, metric_name, one_line, param_text, status_for
from medtune.tracking.lookups import existing_models, existing_runs, get_step_run, model_lookup_error
from medtune.tracking.runs import (
    Interrupted,
    end_launcher_run,
    end_orphaned_runs,
    install_signal_handlers,
    launcher_set_aside,
    link_launcher,
    pipeline_run,
    process_tags,
    step_run,
    tag_launcher,
    take_launcher,
)
from medtune.tracking.store import (
    TAG_DATASET,
    TAG_ERROR,
    TAG_HOST,
    TAG_PID,
    TAG_STEP,
    configure,
    default_tracking_uri,
    download_artifact,
    ensure_experiment,
    experiment_name,
    find_run,
    find_runs,
    metric_values,
    mlflow_error_line,
    run_status,
    tracking_uri,
)

__all__ = [
    "MAX_PARAM_LEN",
    "TAG_DATASET",
    "TAG_ERROR",
    "TAG_HOST",
    "TAG_PID",
    "TAG_STEP",
    "Interrupted",
    "RunLogger",
    "capture_console",
    "configure",
    "default_tracking_uri",
    "download_artifact",
    "end_launcher_run",
    "end_orphaned_runs",
    "ensure_experiment",
    "existing_models",
    "existing_runs",
    "experiment_name",
    "find_run",
    "find_runs",
    "get_step_run",
    "install_signal_handlers",
    "launcher_set_aside",
    "link_launcher",
    "log_manifest",
    "metric_name",
    "metric_values",
    "mlflow_error_line",
    "model_lookup_error",
    "one_line",
    "param_text",
    "pipeline_run",
    "process_tags",
    "run_status",
    "save_console",
    "status_for",
    "step_run",
    "tag_launcher",
    "take_launcher",
    "tracking_uri",
]
