"""Final training: the members of one configuration, each fitted with early stopping and its best
epoch kept, within a time budget that the members share (re-planned from measured epochs).

No tracking here: epochs are reported through ``report(prefix, epoch, logs)``, and what the step
should record comes back in :class:`FinalFit`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

Report = Callable[[str, int, dict], None]  # (member prefix, epoch, logs)


@dataclass
class FinalFit:
    members: list  # keras.Model, float32
    histories: list[dict]
    metrics: dict[str, float] = field(default_factory=dict)  # the re-planning, to record
    # with folds: each pooled image's labels and out-of-fold probabilities, without and with the flip
    out_of_fold: dict | None = None


def final_fit(
    params: dict,
    cache,
    n_classes: int,
    *,
    class_weight: dict | None,
    weights: dict,
    epochs: int,
    patience: int | None,
    ensemble: int,
    seed: int,
    mixed: bool,
    report: Report,
    budget=None,
    replan: bool = False,
    folds: int = 0,
    groups=None,
) -> FinalFit:
    """Fit ``ensemble`` members (seeds ``seed``, ``seed + 1``, ...) of ``params`` on ``cache``.

    ``folds`` (k > 1): k-fold cross-validation (:mod:`medtune.training.folds`) instead of the
    validation split: one member per fold (``ensemble`` is ignored), ``groups`` per pooled image
    (:func:`~medtune.training.folds.pool_groups`); :attr:`FinalFit.out_of_fold` holds their predictions.

    ``patience`` None: :func:`medtune.planning.rules.early_stopping_patience` of the epochs (it
    follows re-planned epochs). ``budget`` (a :class:`medtune.planning.Budget`): the members share
    what is left after the evaluation's reserve, evenly; with ``replan``, the members after the
    first get the epochs their share pays for at the epoch time the previous member measured.
    """
    from medtune.planning.rules import early_stopping_patience, evaluation_reserve, member_epochs, steady_epoch_seconds
    from medtune.training import folds as kfold

    schedule = params.get("lr_schedule") or "constant"
    reserve = evaluation_reserve(budget.seconds) if budget is not None and budget.seconds else 0.0
    out = FinalFit([], [])
    if folds > 1:
        x, y = kfold.pooled(cache)
        fold = kfold.assign_folds(y, groups, folds, seed)
        ensemble = folds
        out.out_of_fold = {"y": y, "plain": None, "flip": None}
        log.info("%d-fold cross-validation on %d pooled training and validation images", folds, len(y))
    for i in range(ensemble):
        if i and replan and budget is not None and out.histories[-1].get("epoch_seconds"):
            history = out.histories[-1]
            epoch_s = steady_epoch_seconds([float(t) for t in history["epoch_seconds"]], stages=history.get("stage"))
            planned = member_epochs(max(0.0, budget.remaining() - reserve), ensemble - i, epoch_s)
            out.metrics.update({f"member{i}_planned_epochs": planned, f"member{i - 1}_epoch_seconds": epoch_s})
            if planned != epochs:
                log.info(
                    "Members %d-%d re-planned from member %d's %.1f s per epoch: %d epochs each (were %d)",
                    i,
                    ensemble - 1,
                    i - 1,
                    epoch_s,
                    planned,
                    epochs,
                )
                epochs = planned
        share = budget.share(fraction=1 / (ensemble - i), keep=reserve) if budget is not None else None
        prefix = f"member{i}_" if ensemble > 1 else ""
        data = kfold.fold_data(x, y, fold, i) if folds > 1 else cache
        member, history = fit_member(
            params,
            data,
            n_classes,
            class_weight=class_weight,
            weights=weights,
            epochs=epochs,
            patience=patience or early_stopping_patience(epochs, schedule),
            seed=seed + i,
            report=lambda epoch, logs, prefix=prefix: report(prefix, epoch, logs),
            title=f"final training{' ' + prefix.rstrip('_') if prefix else ''}",
            budget=share,
        )
        if mixed:  # evaluate, explain and log a float32 model: it serves on any CPU
            from medtune.models import float32_copy

            member = float32_copy(member, params, tuple(cache.x["train"].shape[1:]), n_classes)
        if folds > 1:
            _predict_held_out(out.out_of_fold, member, data.x["val"], fold == i)
        out.members.append(member)
        out.histories.append(history)
    return out


def _predict_held_out(out_of_fold: dict, member, x_held_out, rows) -> None:
    """A member's probabilities on its own held-out fold, without and with the flip, into ``out_of_fold``."""
    from medtune.models.tta import with_flip
    from medtune.training import predict_proba

    for name, model in (("plain", member), ("flip", with_flip(member))):
        proba = predict_proba(model, x_held_out)
        if out_of_fold[name] is None:
            out_of_fold[name] = np.zeros((len(out_of_fold["y"]), proba.shape[1]), dtype=np.float32)
        out_of_fold[name][rows] = proba


def fit_member(
    params: dict,
    cache,
    n_classes: int,
    *,
    class_weight,
    weights,
    epochs: int,
    patience: int,
    seed: int,
    report: Callable[[int, dict], None],
    title: str = "final training",
    budget=None,
):
    """One model of the final training: fitted with early stopping, the best epoch's weights restored."""
    import keras

    from medtune import training

    keras.utils.set_random_seed(seed)
    setup = training.prepare_fit(
        params,
        cache.x["train"],
        cache.y["train"],
        cache.x["val"],
        cache.y["val"],
        n_classes,
        seed=seed,
        weights=weights,
        compile=False,  # fit_stages compiles what it trains (a folded view, or the model)
    )
    model = setup.model
    constant = params.get("lr_schedule", "constant") == "constant"  # a cosine sets its own rate
    best = training.BestWeights(model.weights, monitor="val_macro_f1")
    callbacks = [
        *setup.callbacks,
        training.StagedEarlyStopping(monitor="val_macro_f1", mode="max", patience=patience),  # BestWeights restores
        *(
            [
                keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss", factor=0.5, patience=max(2, patience // 3), min_lr=1e-6
                )
            ]
            if constant
            else []
        ),
        best,
        *([training.TimeLimit(budget)] if budget is not None else []),
        epoch_reporter(report, epochs, title),
    ]
    history = training.fit_stages(
        model,
        params,
        setup.train_ds,
        setup.val_ds,
        y_val=cache.y["val"],
        epochs=epochs,
        class_weight=class_weight,
        callbacks=callbacks,
        stop_requested=(lambda: budget.spent()) if budget is not None else None,
        budget=budget,
        on_stage=lambda st, n: log.info(
            "Stage %d: epochs %d-%d, learning rate %.2g, %d trainable layers",
            st.number,
            st.first_epoch + 1,
            st.end_epoch,
            st.learning_rate,
            n,
        ),
    )
    best.restore()  # the best epoch, whatever early stopping did
    return model, history


def epoch_reporter(report: Callable[[int, dict], None], epochs: int, title: str = "final training"):
    """A callback: each epoch's logs (with the learning rate) to ``report``, and one readable line per
    epoch with the time left (a bar on a terminal)."""
    import keras

    from medtune.progress import Counter, finite

    class EpochReporter(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if not hasattr(self, "bar"):  # one bar over all stages
                self.bar = Counter(title, epochs, "epoch", lines=False)

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            lr = getattr(self.model.optimizer, "learning_rate", None)
            if lr is not None:
                try:
                    logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
                except Exception:  # noqa: BLE001
                    pass
            report(epoch, logs)
            shown = {
                k: v for k, v in logs.items() if k in ("loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1")
            }
            text = ", ".join(f"{k}={float(v):.4f}" for k, v in shown.items() if finite(v))
            self.bar.to(epoch + 1)
            log.info(
                "%s epoch %d/%d: %s (%s; early stopping may end sooner)",
                title,
                epoch + 1,
                epochs,
                text,
                self.bar.eta(),
            )

        def on_train_end(self, logs=None):
            if self.model.stop_training or self.bar.done >= epochs:
                self.bar.close()

    return EpochReporter()


def device_summary(mixed_precision: bool) -> tuple[str, bool]:
    """Use the GPU when TensorFlow sees one (mixed precision there, unless turned off)."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except (RuntimeError, ValueError):
                pass
        if mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        return f"GPU ({len(gpus)}: {gpus[0].name})", bool(mixed_precision)
    keras.mixed_precision.set_global_policy("float32")
    return "CPU", False


def choose_flip(model, x_val, y_val, mode: str, proba: dict | None = None):
    """The final model with test-time flipping when ``mode`` says so (``auto``: when its validation
    macro-F1 is higher; the test images play no part).

    ``proba``: the validation probabilities ``plain`` and ``flip`` when they are already known (the
    folds' out-of-fold predictions); otherwise ``model`` predicts ``x_val``.
    Returns ``(model, used, scores)``: ``scores`` has the validation macro-F1 ``plain`` and ``flip``
    (empty for ``none``).
    """
    from medtune.errors import ConfigError
    from medtune.models.tta import TTA_MODES, with_flip
    from medtune.training import predict_proba, validation_scores

    if mode not in TTA_MODES:
        raise ConfigError(f"tta={mode!r}: expected one of {', '.join(TTA_MODES)}")
    if mode == "none":
        return model, False, {}
    flipped = with_flip(model)
    scores = {
        name: validation_scores(y_val, proba[name] if proba else predict_proba(candidate, x_val))["val_macro_f1"]
        for name, candidate in (("plain", model), ("flip", flipped))
    }
    used = mode == "flip" or scores["flip"] > scores["plain"]
    return (flipped if used else model), used, scores
