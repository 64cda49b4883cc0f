"""Training on arrays: input pipeline, compile, callbacks, fit with validation scores, predict.

* ``data``      - tf.data from cached uint8 arrays, augmentation, balanced class weights
* ``compile``   - optimiser, learning rate and loss from plain params
* ``callbacks`` - validation scores, precise BatchNorm, NaN guard, staged early stopping, time limit, schedules
* ``fit``       - ``prepare_fit`` (shared by trials and final training), ``fit``, ``fit_stages``, ``predict_proba``
* ``runtime``   - thread pools, and releasing a finished model's memory

Plain functions on numpy arrays and Keras models; no tracking here (never imports mlflow).
Callers log what :func:`fit` returns.

Typical use::

    configure_threads()
    setup = prepare_fit(params, x_train, y_train, x_val, y_val, k, seed=seed, class_weights=True)
    history = fit_stages(setup.model, params, setup.train_ds, setup.val_ds, y_val=y_val, epochs=10,
                         class_weight=setup.class_weight, callbacks=setup.callbacks)
"""

from medtune.errors import TrainingDiverged
from medtune.training.callbacks import (
    LR_SCHEDULES,
    BestWeights,
    EpochCosine,
    EpochScores,
    NaNGuard,
    PreciseBatchNorm,
    StagedEarlyStopping,
    TimeLimit,
    reestimate_batchnorm,
    schedule_callbacks,
    validation_loss_accuracy,
    validation_scores,
)
from medtune.training.compile import compile_model
from medtune.training.data import augment_batch, balanced_class_weights, make_dataset
from medtune.training.fit import FitSetup, fit, fit_stages, predict_proba, prepare_fit
from medtune.training.runtime import configure_threads, release_model, usable_cpus

__all__ = [
    "LR_SCHEDULES",
    "BestWeights",
    "EpochCosine",
    "EpochScores",
    "FitSetup",
    "NaNGuard",
    "PreciseBatchNorm",
    "StagedEarlyStopping",
    "TimeLimit",
    "TrainingDiverged",
    "augment_batch",
    "balanced_class_weights",
    "compile_model",
    "configure_threads",
    "fit",
    "fit_stages",
    "make_dataset",
    "predict_proba",
    "prepare_fit",
    "reestimate_batchnorm",
    "release_model",
    "schedule_callbacks",
    "usable_cpus",
    "validation_loss_accuracy",
    "validation_scores",
]
