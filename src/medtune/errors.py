"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class MedtuneError(Exception):
    """Base class: the message names the file or parameter at fault."""


class DataError(MedtuneError):
    """A dataset, folder or image cannot be used."""


class DatasetNotFound(DataError):
    """A named dataset is neither on disk nor downloadable."""


class SpaceError(MedtuneError):
    """A search-space file is invalid."""


class ConfigError(MedtuneError):
    """A parameter value is invalid."""


class WeightsError(ConfigError):
    """Pretrained weights cannot be found, downloaded or loaded."""


class InternalError(MedtuneError):
    """A check of medtune's own bookkeeping failed: a bug to report, not a fault of the data or settings."""


class TrialError(MedtuneError):
    """One trial failed on its own (recorded FAILED; the search goes on with the next trial)."""


class TrainingDiverged(TrialError, RuntimeError):
    """The training loss became NaN or infinite.

    Attributes:
        epoch: 0-based epoch in which the loss diverged.
        history: the history dict up to and including that epoch.
    """

    def __init__(self, message: str, *, epoch: int = -1, history: dict | None = None):
        super().__init__(message)
        self.epoch = epoch
        self.history = history or {}


# Errors that every trial would hit again (medtune's settings, its data, its own code): a search
# stops at the first one instead of failing trial after trial, as keras-tuner's FatalError does.
_DETERMINISTIC = (ConfigError, SpaceError, DataError, InternalError, TypeError, NameError, AttributeError, ImportError)


def stops_the_search(exc: BaseException) -> bool:
    """Whether ``exc``, raised by one trial, would be raised by every trial."""
    return isinstance(exc, _DETERMINISTIC) and not isinstance(exc, TrialError)


def as_search_error(exc: BaseException, trial: int) -> MedtuneError:
    """A deterministic trial error as the one-line error that stops the search."""
    if isinstance(exc, MedtuneError):
        return exc
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return InternalError(
        f"trial {trial} failed with {type(exc).__name__}: {text} -- every trial would fail the "
        "same way (a bug in medtune or in the space file), so the search stopped"
    )
