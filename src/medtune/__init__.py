"""medtune: tracked hyperparameter search for medical-image classifiers.

From Python (notebooks): ``medtune.main``, ``medtune.split``, ``medtune.search``, ``medtune.train``
and ``medtune.load`` (see :mod:`medtune.api`); nothing heavy is imported until they are called.
"""

__version__ = "0.1.0"

from medtune.api import Model, load, main, search, split, train  # noqa: E402

__all__ = ["Model", "__version__", "load", "main", "search", "split", "train"]
