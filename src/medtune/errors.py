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


class WeightsError(MedtuneError):
    """Pretrained weights cannot be found or loaded."""


class InternalError(MedtuneError):
    """A check of medtune's own bookkeeping failed: a bug to report, not a fault of the data or settings."""
