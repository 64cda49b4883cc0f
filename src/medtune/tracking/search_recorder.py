"""The search recorder: each trial a nested run of the search's parent run, progress lines, the summary.

Engines call :class:`SearchRecorder` (``trial_started`` / ``epoch_end`` / ``trial_finished``);
the trial's values (history, confusion counts, probe heat-maps) are computed by the core
(:func:`medtune.hpo.trial.train_trial`) and only rendered and logged here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from medtune.hpo.base import COMPLETE, FAILED, PRUNED, TrialSummary, best_trial
from medtune.hpo.engines import get_engine
from medtune.hpo.trial import objective_direction
from medtune.planning.budget import Budget
from medtune.progress import finite, fmt, short_params
from medtune.tracking.logger import RunLogger, one_line, param_text, status_for
from medtune.tracking.runs import end_if_running, end_with_launcher, process_tags
from medtune.tracking.store import TAG_DATASET, TAG_ERROR, TAG_HOST, TAG_PID, TAG_STEP

log = logging.getLogger(__name__)
progress_log = logging.getLogger("medtune.progress")


class SearchRecorder:
    """Records each trial as a nested MLflow run and prints progress to the console."""

    def __init__(
        self,
        parent: RunLogger,
        experiment_id: str,
        opts,  # SearchOptions: dataset, engine, trials, epochs, objective, rungs
        study: str,
        classes: list[str],
        weights: dict | None = None,
        budget: Budget | None = None,  # the search's time budget, when it has one
    ):
        self.parent, self.experiment_id, self.opts, self.study = parent, experiment_id, opts, study
        self.classes, self.weights = classes, weights or {}
        self.best: float | None = None
        self.done = 0  # trials COMPLETE or PRUNED in the study (all sessions and workers)
        self.direction = objective_direction(opts.objective)
        self.bar = None  # trials left in this session: a bar on a terminal, an ETA in each line
        self.budget = budget

    # -- engine callbacks
    def trial_started(self, number: int, params: dict, recipe: str | None = None):
        """Open the trial's run (tagged ``medtune.recipe`` when a warm start queued it) and say so."""
        handle = _Handle(None, number, time.perf_counter(), params)
        try:
            handle.logger = self._open_run(number, params, recipe)
        except Exception as exc:  # the tracking server is down: the trial runs, its result stays in the study
            self._untracked(handle, exc)
        if self.bar is None:
            from medtune.progress import Counter

            left = max(self.opts.trials - self.done, 1) if get_engine(self.opts.engine).counts_trials else 0
            self.bar = Counter("trials", left, "trial", lines=False)
        # the number is Optuna's and the run's (trial-007 is "trial 7"), counted from 0
        progress_log.info(
            "trial %d started (%s%s, best %s): %s",
            number,
            f"recipe {recipe}, " if recipe else "",
            self._done(),
            fmt(self.best),
            short_params(params),
        )
        return handle

    def epoch_end(self, handle, epoch: int, logs: dict) -> None:
        if handle.logger is not None:
            try:
                handle.logger.epoch(logs, epoch)  # one small batch per epoch; async costs ~1.5 s per trial to drain
            except Exception as exc:
                self._untracked(handle, exc)
        value = logs.get(self.opts.objective)
        best = self.best
        progress_log.info(
            "trial %d epoch %d/%d%s %s=%s (best so far %s)",
            handle.number,
            epoch + 1,
            self.opts.epochs,
            f" at {int(logs['image_size'])} px" if self.opts.rungs and finite(logs.get("image_size")) else "",
            self.opts.objective,
            fmt(value),
            fmt(best),
        )

    def trial_finished(
        self, handle, state: str, result=None, error: BaseException | None = None, reason: str | None = None
    ) -> None:
        logger = handle.logger
        seconds = time.perf_counter() - handle.t0
        interrupted = error is not None and status_for(error) == "KILLED"  # a signal, or the database gone
        if logger is not None:
            self._log_trial_end(handle, logger, state, result, error, reason, seconds, interrupted)
        self._count_and_print(handle, state, result, error, reason, seconds, interrupted)

    def _log_trial_end(self, handle, logger, state, result, error, reason, seconds, interrupted) -> None:
        try:
            logger.metrics({"trial_seconds": seconds})
            tags = {"medtune.trial_state": "KILLED" if interrupted else state}
            if reason:
                tags["medtune.stop_reason"] = reason
            if error is not None:
                tags[TAG_ERROR] = one_line(error)
            if result is not None and result.history:
                tags["medtune.epochs_run"] = result.epochs_run
                if state == COMPLETE:
                    logger.metrics({f"best_{self.opts.objective}": result.value, "best_epoch": result.best_epoch})
            logger.tags(tags)
            if result is not None and not interrupted and result.history:
                self._artifacts(logger, result)
        except Exception as exc:  # tracking trouble must not turn a good trial into a failed one
            log.warning("trial %d: could not log everything: %s", handle.number, exc)
        finally:
            status = "KILLED" if interrupted else ("FAILED" if state == FAILED else "FINISHED")
            try:
                logger.end(status)
            except Exception as exc:
                self._untracked(handle, exc)

    def _count_and_print(self, handle, state, result, error, reason, seconds, interrupted) -> None:
        if state == COMPLETE and result is not None and finite(result.value):
            better = self.best is None or (
                result.value > self.best if self.direction == "maximize" else result.value < self.best
            )
            if better:
                self.best = result.value
        if state in (COMPLETE, PRUNED):
            self.done += 1
            self.bar.update(1, postfix=f"best {fmt(self.best)}")
        progress_log.info(
            "trial %d %s in %.0f s: %s=%s (best %s; %s%s)%s",
            handle.number,
            "KILLED" if interrupted else (f"{state} ({reason})" if reason and reason != "pruned" else state),
            seconds,
            self.opts.objective,
            fmt(result.value if result is not None else None),
            fmt(self.best),
            self._done(),
            f", {self.bar.eta()}" if 0 < self.bar.done < self.bar.total and self.budget is None else "",
            f": {one_line(error)}" if error is not None and not interrupted else "",
        )

    def progress(self, summaries: list[TrialSummary]) -> None:
        done = [s for s in summaries if s.state in (COMPLETE, PRUNED)]
        best = best_trial(summaries, self.direction)
        metrics = {"trials_done": len(done), "trials_failed": sum(s.state == FAILED for s in summaries)}
        self.done = len(done)
        if best is not None:
            metrics["best_so_far"] = best.value
            self.best = best.value
        try:
            self.parent.metrics(metrics, step=len(summaries))
        except Exception as exc:  # the search goes on while the tracking server is away
            log.warning("search progress not logged: %s", one_line(exc))

    def trial_abandoned(self, run_id: str, reason: str) -> None:
        """Another worker's trial failed by Optuna's heartbeat (or found orphaned on this host): the
        survivor ends KILLED its run, that worker's search run and the `mlflow run` launcher run it linked."""
        client = self.parent.client
        try:
            ended = [run_id] if end_if_running(client, run_id, reason) else []
            search_id = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
            if search_id and search_id != self.parent.run_id:
                ended += end_with_launcher(client, search_id, reason)
        except Exception as exc:  # the tracking server away: that worker's host repairs them at its next start
            log.warning("the abandoned trial's run %s is not ended yet: %s", run_id, one_line(exc))
            return
        if ended:
            log.warning("Ended KILLED the runs of an abandoned trial and its worker (%s): %s", reason, ", ".join(ended))

    def search_stopped(self, reason: str) -> None:
        self.stop_reason = reason
        try:
            self.parent.tags({"medtune.stop_reason": reason})
        except Exception as exc:  # logged again with the summary, once the server answers
            log.warning("stop reason not logged: %s", one_line(exc))

    def _open_run(self, number: int, params: dict, recipe: str | None = None) -> RunLogger:
        client = self.parent.client
        existing = client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`medtune.study` = '{self.study}' and tags.`medtune.trial` = '{number}'",
            max_results=100,
        )
        attempt = len(existing) + 1  # keras-tuner retries an interrupted trial under its own number
        tags = {
            "mlflow.parentRunId": self.parent.run_id,
            TAG_STEP: "trial",
            TAG_DATASET: self.opts.dataset,
            "medtune.study": self.study,
            "medtune.trial": str(number),
            "medtune.attempt": str(attempt),
            "medtune.engine": self.opts.engine,
            **({"medtune.recipe": recipe} if recipe else {}),
            **process_tags(),
        }
        name = f"trial-{number:03d}" + (f"-attempt{attempt}" if attempt > 1 else "")
        run = client.create_run(self.experiment_id, run_name=name, tags=tags)
        logger = RunLogger(run.info.run_id, client)
        if attempt > 1:  # the earlier attempt keeps its own run and status (KILLED, FAILED)
            earlier = ", ".join(f"{r.info.run_id} {r.info.status}" for r in existing)
            log.info("Trial %d is retried (attempt %d) in a run of its own; earlier: %s", number, attempt, earlier)
        logger.params(params)
        backbone = params.get("backbone", "custom")
        if backbone != "custom":  # what the trial's backbone was initialised from
            source = self.weights.get(backbone)
            logger.tags(
                {
                    "medtune.weights_source": source.source if source else "none",
                    "medtune.weights_sha256": source.sha256 if source else "",
                }
            )
        return logger

    def _untracked(self, handle, exc: BaseException) -> None:
        """Stop logging this trial (its result stays in the study); say so once per trial."""
        handle.logger = None
        handle.tracking_error = one_line(exc)
        log.warning(
            "trial %d: MLflow tracking failed (%s); the trial goes on untracked and its result stays in the study",
            handle.number,
            handle.tracking_error,
        )

    def _done(self) -> str:
        budget = self.budget
        if budget is not None and budget.seconds is not None:  # the time, not the trial count, ends it
            return f"{self.done} done, {budget.remaining() / 60:.1f} min of the search's budget left"
        if not get_engine(self.opts.engine).counts_trials:  # Hyperband's brackets, not `trials`, set its budget
            return f"{self.done} done"
        return f"{self.done} of {self.opts.trials} done"

    # -- per-trial artifacts, made once at the end of the trial
    def _artifacts(self, logger: RunLogger, result) -> None:
        from medtune import reports

        logger.figure(reports.learning_curves(result.history), "learning_curves.png")
        if result.confusion is not None:
            figure = reports.confusion_matrix_figure(result.confusion, self.classes, title="validation")
            logger.figure(figure, "confusion_matrix.png")
        probe = result.probe
        if probe is not None:
            titles = [
                f"{self.classes[int(t)]} -> {self.classes[int(p.argmax())]} {p.max():.2f}"
                for t, p in zip(probe.labels, probe.proba)
            ]
            logger.figure(reports.gradcam_grid(probe.images, probe.heatmaps, titles), "gradcam.png")


@dataclass
class _Handle:
    logger: RunLogger | None  # None: tracking failed, the trial runs untracked
    number: int
    t0: float
    params: dict
    tracking_error: str | None = None

    @property
    def run_id(self) -> str | None:
        return self.logger.run_id if self.logger is not None else None


def trial_run_ids(summaries, parent, experiment_id, study):
    """Fill in run ids and durations from the trial runs (keras-tuner does not keep them)."""
    runs = parent.client.search_runs(
        [experiment_id],
        filter_string=f"tags.`medtune.study` = '{study}' and tags.`medtune.step` = 'trial'",
        max_results=5000,
    )
    by_number = {}  # per trial number: its finished attempt, else the latest one
    for r in sorted(runs, key=lambda r: (r.info.status == "FINISHED", r.info.start_time or 0)):
        if r.data.tags.get("medtune.trial", "").isdigit():
            by_number[int(r.data.tags["medtune.trial"])] = r
    for s in summaries:
        run = by_number.get(s.number)
        if run is None:
            continue
        s.run_id = s.run_id or run.info.run_id
        if s.duration_s is None and "trial_seconds" in run.data.metrics:
            s.duration_s = run.data.metrics["trial_seconds"]
        if s.epochs_run is None and "medtune.epochs_run" in run.data.tags:
            s.epochs_run = int(run.data.tags["medtune.epochs_run"])
    for s in summaries:
        if s.run_id is None and s.state in (COMPLETE, PRUNED):
            s.run_id = _log_late(s, parent, experiment_id, study)
    _end_runs_left_by_an_outage(runs, summaries, parent.client)
    return summaries


def _end_runs_left_by_an_outage(runs, summaries, client) -> None:
    """This process's trial runs still RUNNING for trials the study has ended: the tracking server
    went away mid-trial. Ended now with the trial's state, and tagged with the gap in their history."""
    ended = {s.number: s.state for s in summaries if s.state in (COMPLETE, PRUNED, FAILED)}
    mine = (str(os.getpid()), socket.gethostname())
    for r in runs:
        number = r.data.tags.get("medtune.trial", "")
        if r.info.status != "RUNNING" or not number.isdigit() or int(number) not in ended:
            continue
        if (r.data.tags.get(TAG_PID), r.data.tags.get(TAG_HOST)) != mine:
            continue
        state = ended[int(number)]
        client.set_tag(r.info.run_id, "medtune.trial_state", state)
        client.set_tag(r.info.run_id, "medtune.tracking_gap", "the tracking server was away: the history stops early")
        client.set_terminated(r.info.run_id, "FAILED" if state == FAILED else "FINISHED")


def _log_late(s: TrialSummary, parent: RunLogger, experiment_id: str, study: str) -> str:
    """The run of a trial that ran while the tracking server was away, from what the study kept."""
    tags = {
        "mlflow.parentRunId": parent.run_id,
        TAG_STEP: "trial",
        "medtune.study": study,
        "medtune.trial": str(s.number),
        "medtune.trial_state": s.state,
        "medtune.logged_late": "true",  # from the study: no per-epoch history, figures or console
    }
    run = parent.client.create_run(experiment_id, run_name=f"trial-{s.number:03d}", tags=tags)
    logger = RunLogger(run.info.run_id, parent.client)
    logger.params(s.params)
    objective = parent.client.get_run(parent.run_id).data.tags.get("medtune.objective", "objective")
    for step, value in sorted(s.intermediate.items()):
        logger.metrics({objective: value}, step=int(step) - 1)
    if s.state == COMPLETE and s.value is not None:
        logger.metrics({f"best_{objective}": s.value})
    logger.end("FINISHED")
    log.info("Trial %d, run untracked while the tracking server was away, logged now: %s", s.number, run.info.run_id)
    return run.info.run_id


def log_search(parent, summaries, best, space, opts, direction, seconds) -> None:
    from medtune.hpo import summary

    states = [s.state for s in summaries]
    pruned_saved = sum(max(opts.epochs - (s.epochs_run or opts.epochs), 0) for s in summaries if s.state == PRUNED)
    parent.metrics(
        {
            "trials_total": len(summaries),
            "trials_complete": states.count(COMPLETE),
            "trials_pruned": states.count(PRUNED),
            "trials_failed": states.count(FAILED),
            "epochs_saved_by_pruning": pruned_saved,
            "search_seconds": seconds,
        }
    )
    table = summary.trials_table(summaries, space)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials.csv"
        table.to_csv(path, index=False)
        parent.file(path)
    for name, fig in summary.search_figures(summaries, space, direction).items():
        parent.figure(fig, f"plots/{name}")
    if best is None:
        log.warning("No trial completed: nothing to report as best")
        parent.tags({"medtune.best_trial": "none"})
        return
    parent.json(
        {
            "params": best.params,
            "value": best.value,
            "objective": opts.objective,
            "trial": best.number,
            "run_id": best.run_id,
            "image_size": opts.image_size,
            "weights": opts.weights,
        },
        "best_params.json",
    )
    best_params = {f"best_{k}": v for k, v in best.params.items()}
    logged = parent.client.get_run(parent.run_id).data.params
    stale = sorted(
        k
        for k in set(best_params) | {k for k in logged if k.startswith("best_")}
        if k in logged and logged[k] != param_text(best_params.get(k))
    )
    parent.params(best_params)
    if stale:  # MLflow params cannot change: a resumed search whose best changed says so
        log.warning(
            "best_* params of this run are from an earlier session (%s); best_params.json is current", ", ".join(stale)
        )
        parent.tags({"medtune.best_params_stale": ",".join(stale)})
    else:
        with contextlib.suppress(Exception):
            parent.client.delete_tag(parent.run_id, "medtune.best_params_stale")
    parent.metrics({f"best_{opts.objective}": best.value, "best_so_far": best.value})
    parent.tags({"medtune.best_trial": best.number, "medtune.best_run_id": best.run_id or ""})
    log.info(
        "Search done in %.0f s: %d complete, %d pruned, %d failed; best trial %d %s=%.4f",
        seconds,
        states.count(COMPLETE),
        states.count(PRUNED),
        states.count(FAILED),
        best.number,
        opts.objective,
        best.value,
    )
