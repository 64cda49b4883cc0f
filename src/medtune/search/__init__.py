"""Hyperparameter search: ``medtune.search(dataset, **options)`` runs one (see :func:`medtune.api.search`).

The package holds the engines (``optuna_engine``, ``keras_tuner_engine``, ``grid``), the trial
runner (``trial``) and what they share (``base``). It is callable, so that ``medtune.search`` is
the notebook function whichever of its modules were imported before.
"""

from __future__ import annotations

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from medtune.api import search

        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
