"""The hyperparameter search space as data: one YAML schema for every search engine.

A space file has two top-level keys, ``description`` (optional text) and ``params`` (a mapping
from parameter name to its definition, in order)::

    params:
      num_blocks: {type: int, low: 2, high: 4, default: 3, help: "..."}
      l2: {type: float, low: 1.0e-6, high: 1.0e-3, log: true}
      optimizer: {type: categorical, choices: [adam, rmsprop, sgd]}
      momentum: {type: float, low: 0.8, high: 0.99, condition: {optimizer: sgd}}
      residual: {type: bool}

Types are ``int``, ``float``, ``categorical`` and ``bool``; a definition may use the keys
``low``, ``high``, ``step``, ``log`` (numeric types), ``choices`` (categorical), ``default``,
``help`` and ``condition``. A condition names ONE parent parameter declared earlier and the
value(s) for which the child is active: ``{optimizer: sgd}`` or ``{optimizer: [sgd, rmsprop]}``.
Categorical choices are all of one kind (all strings, all numbers or all booleans; integers
mixed with floats become floats) because keras-tuner's ``Choice`` requires it.

This module only parses and validates; each engine adapts a :class:`SearchSpace` itself
(``medtune.hpo``). Nothing here imports TensorFlow, Optuna or keras-tuner.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medtune.errors import SpaceError

__all__ = [
    "DEFAULT_SPACE",
    "Param",
    "SearchSpace",
    "load_space",
    "parse_space",
    "resolve_space_path",
]

DEFAULT_SPACE = "cnn"
"""Name of the space used when none is given (``search_spaces/cnn.yaml``)."""

SPACES_DIRNAME = "search_spaces"

TYPES = ("int", "float", "categorical", "bool")
_TOP_KEYS = ("description", "params")
_PARAM_KEYS = ("type", "low", "high", "step", "log", "choices", "default", "help", "condition")
_ALLOWED_KEYS = {
    "int": {"type", "low", "high", "step", "log", "default", "help", "condition"},
    "float": {"type", "low", "high", "step", "log", "default", "help", "condition"},
    "categorical": {"type", "choices", "default", "help", "condition"},
    "bool": {"type", "default", "help", "condition"},
}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REL_TOL = 1e-9


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Param:
    """One hyperparameter.

    ``condition`` maps one parent name to the tuple of parent values for which this
    parameter is active (``None``: always active, given that its parent chain is active).
    """

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    default: Any = None
    help: str = ""
    condition: dict[str, tuple[Any, ...]] | None = field(default=None, hash=False)

    def default_value(self) -> Any:
        """The declared default, else the first choice, ``False`` or ``low``."""
        if self.default is not None:
            return self.default
        if self.type == "categorical":
            return self.choices[0]
        if self.type == "bool":
            return False
        return self.low

    @property
    def parent(self) -> str | None:
        """Name of the parameter this one is conditioned on, if any."""
        return next(iter(self.condition)) if self.condition else None

    @property
    def parent_values(self) -> tuple[Any, ...]:
        """Values of :attr:`parent` for which this parameter is active (empty if none)."""
        return next(iter(self.condition.values())) if self.condition else ()


@dataclass(frozen=True)
class SearchSpace:
    """An ordered, validated set of :class:`Param` (parents always precede children)."""

    params: tuple[Param, ...]
    source: str
    description: str = ""

    def names(self) -> list[str]:
        """Parameter names in declaration order."""
        return [p.name for p in self.params]

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.params)

    def __iter__(self):
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def is_active(self, name: str, values: Mapping[str, Any]) -> bool:
        """Whether ``name`` is active given the (possibly partial) ``values``.

        A parent missing from ``values`` counts as its default value. A parameter whose
        parent is inactive is inactive.
        """
        param = self[name]
        if not param.condition:
            return True
        parent = self[param.parent]
        if not self.is_active(parent.name, values):
            return False
        value = values.get(parent.name, parent.default_value())
        return any(_same(value, v) for v in param.parent_values)

    def fits(self, name: str, value: Any) -> bool:
        """Whether ``value`` is a valid value of parameter ``name`` (type and range; not the step grid)."""
        try:
            _coerce_value(self[name], value, self.source)
        except SpaceError:
            return False
        return True

    def defaults(self) -> dict[str, Any]:
        """Default value of every parameter that is active under the defaults."""
        out: dict[str, Any] = {}
        for p in self.params:
            if self.is_active(p.name, out):
                out[p.name] = p.default_value()
        return out

    def check_values(self, values: Mapping[str, Any], *, fill_defaults: bool = False) -> dict:
        """Validate a concrete parameter dict against the space and return a clean copy.

        Values are coerced to the parameter's type (so strings read back from a tracking
        server, ``"0.001"`` or ``"True"``, are accepted), ranges are checked (not the step
        grid), and inactive parameters are dropped. With ``fill_defaults`` the active
        parameters missing from ``values`` get their default.

        Raises:
            SpaceError: an unknown name or an invalid value; the message names the param.
        """
        unknown = [k for k in values if k not in self]
        if unknown:
            raise SpaceError(f"{self.source}: unknown parameter {unknown[0]!r} (known: {', '.join(self.names())})")
        clean: dict[str, Any] = {}
        for p in self.params:
            if not self.is_active(p.name, clean):
                continue
            if p.name in values:
                clean[p.name] = _coerce_value(p, values[p.name], self.source)
            elif fill_defaults:
                clean[p.name] = p.default_value()
        return clean


# --------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float and rejects duplicate keys."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file.

    Raises:
        SpaceError: the file is missing, is not valid YAML or is not a valid space.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpaceError(f"{path}: search-space file not found") from None
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read search-space file ({exc.strerror})") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpaceError(f"{path}: YAML syntax error{where}: {problem}") from None
    return parse_space(data, source=str(path))


def parse_space(data: Mapping, source: str = "<dict>") -> SearchSpace:
    """Validate an already-parsed space (the YAML content as a mapping).

    Raises:
        SpaceError: the first problem found, as ``"<source>: params.<name>.<key>: ..."``.
    """
    if not isinstance(data, Mapping):
        raise SpaceError(f"{source}: a search space must be a mapping with a 'params' key")
    for key in data:
        if key not in _TOP_KEYS:
            raise SpaceError(f"{source}: unknown top-level key {key!r} (allowed: {', '.join(_TOP_KEYS)})")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise SpaceError(f"{source}: description must be text")
    raw_params = data.get("params")
    if not isinstance(raw_params, Mapping) or not raw_params:
        raise SpaceError(f"{source}: params must be a non-empty mapping of name -> definition")
    params: list[Param] = []
    for name, spec in raw_params.items():
        params.append(_parse_param(name, spec, params, source))
    return SearchSpace(params=tuple(params), source=source, description=description.strip())


def resolve_space_path(name_or_path: str | Path | None) -> Path:
    """Find a search-space file.

    ``None`` means :data:`DEFAULT_SPACE`. A bare name (no ``/``, no ``.yaml``/``.yml``
    suffix), e.g. ``transfer``, is looked up as ``search_spaces/<name>.yaml`` first in the
    project directory (:func:`medtune.settings.project_dir`), then among the spaces shipped
    with medtune (``search_spaces/`` at the top of a clone, package data of a wheel). Anything else
    is taken as a path and returned as given (a missing file is
    reported by :func:`load_space`).

    Raises:
        SpaceError: a bare name that exists in none of these places.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_SPACE
    text = str(name_or_path)
    is_name = (
        isinstance(name_or_path, str) and "/" not in text and "\\" not in text and not text.endswith((".yaml", ".yml"))
    )
    if not is_name:
        return Path(name_or_path).expanduser()
    candidates = [d / f"{text}.yaml" for d in _space_dirs()]
    for c in candidates:
        if c.is_file():
            return c
    known = sorted({p.stem for d in _space_dirs() if d.is_dir() for p in d.glob("*.yaml")})
    raise SpaceError(
        f"search space {text!r} not found (looked for {', '.join(map(str, candidates))}; "
        f"known: {', '.join(known) or 'none'})"
    )


def _space_dirs() -> list[Path]:
    """``search_spaces/`` in the project directory (the user's own), then the spaces shipped in the package."""
    from medtune import settings  # late: settings reads the environment when called

    shipped = Path(__file__).resolve().parent / SPACES_DIRNAME  # package data of a wheel
    if not shipped.is_dir():  # a clone (editable install): the project's top-level folder
        shipped = Path(__file__).resolve().parents[2] / SPACES_DIRNAME
    own = settings.project_dir() / SPACES_DIRNAME
    return [own] if own.resolve() == shipped else [own, shipped]


# --------------------------------------------------------------------------- validation


def _parse_param(name: Any, spec: Any, earlier: list[Param], source: str) -> Param:
    where = f"{source}: params.{name}"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SpaceError(f"{where}: parameter names must be identifiers (letters, digits, _)")
    if not isinstance(spec, Mapping):
        raise SpaceError(f"{where}: definition must be a mapping like {{type: int, low: 1, high: 4}}")
    for key in spec:
        if key not in _PARAM_KEYS:
            raise SpaceError(f"{where}.{key}: unknown key (allowed: {', '.join(_PARAM_KEYS)})")
    ptype = spec.get("type")
    if ptype not in TYPES:
        raise SpaceError(f"{where}.type: unknown type {ptype!r} (allowed: {', '.join(TYPES)})")
    for key in spec:
        if key not in _ALLOWED_KEYS[ptype]:
            raise SpaceError(f"{where}.{key}: not allowed for type {ptype}")
    help_text = spec.get("help", "") or ""
    if not isinstance(help_text, str):
        raise SpaceError(f"{where}.help: must be text")

    low = high = step = None
    log = False
    choices = None
    if ptype in ("int", "float"):
        low = _number(spec, "low", ptype, where, required=True)
        high = _number(spec, "high", ptype, where, required=True)
        if low >= high:
            raise SpaceError(f"{where}.low: low ({low}) must be < high ({high})")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise SpaceError(f"{where}.log: must be true or false")
        step = _number(spec, "step", ptype, where, required=False)
        if log and low <= 0:
            raise SpaceError(f"{where}.log: a log range needs low > 0 (got {low})")
        if step is not None:
            if log:
                raise SpaceError(f"{where}.step: step cannot be combined with log: true")
            if step <= 0:
                raise SpaceError(f"{where}.step: must be > 0 (got {step})")
            if not _on_grid(high, low, step):
                raise SpaceError(f"{where}.step: high - low ({high} - {low}) is not a multiple of {step}")
    elif ptype == "categorical":
        choices = _choices(spec.get("choices"), where)

    condition = _condition(spec.get("condition"), earlier, where)
    probe = Param(name, ptype, low, high, step, log, choices, None, help_text, condition)
    default = spec.get("default")
    if default is not None:
        default = _check_default(probe, default, where)
    return Param(name, ptype, low, high, step, log, choices, default, help_text, condition)


def _number(spec: Mapping, key: str, ptype: str, where: str, *, required: bool):
    if key not in spec or spec[key] is None:
        if required:
            raise SpaceError(f"{where}.{key}: required for type {ptype}")
        return None
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceError(f"{where}.{key}: must be a number (got {value!r})")
    if not math.isfinite(value):
        raise SpaceError(f"{where}.{key}: must be finite (got {value!r})")
    if ptype == "int":
        if isinstance(value, float) and not value.is_integer():
            raise SpaceError(f"{where}.{key}: must be an integer for type int (got {value!r})")
        return int(value)
    return float(value)


def _choices(raw: Any, where: str) -> tuple:
    if raw is None:
        raise SpaceError(f"{where}.choices: required for type categorical")
    if not isinstance(raw, (list, tuple)):
        raise SpaceError(f"{where}.choices: must be a list")
    if not raw:
        raise SpaceError(f"{where}.choices: must not be empty")
    kinds = {_kind(c) for c in raw}
    if None in kinds:
        bad = next(c for c in raw if _kind(c) is None)
        raise SpaceError(f"{where}.choices: {bad!r} is not a string, number or boolean")
    if kinds == {"int", "float"}:
        raw = [float(c) for c in raw]
    elif len(kinds) > 1:
        mixed = " and ".join(sorted(kinds))
        raise SpaceError(f"{where}.choices: mixes {mixed} values; use one kind")
    if isinstance(raw[0], float) and not all(math.isfinite(c) for c in raw):
        raise SpaceError(f"{where}.choices: must be finite numbers")
    for i, c in enumerate(raw):
        if any(_same(c, d) for d in raw[:i]):
            raise SpaceError(f"{where}.choices: duplicate choice {c!r}")
    return tuple(raw)


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return None


def _condition(raw: Any, earlier: list[Param], where: str) -> dict | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise SpaceError(f"{where}.condition: must name one parent, e.g. {{optimizer: sgd}}")
    ((parent_name, wanted),) = raw.items()
    by_name = {p.name: p for p in earlier}
    if parent_name not in by_name:
        raise SpaceError(f"{where}.condition: parent {parent_name!r} is unknown or not declared before this parameter")
    parent = by_name[parent_name]
    values = list(wanted) if isinstance(wanted, (list, tuple)) else [wanted]
    if not values:
        raise SpaceError(f"{where}.condition: no value given for {parent_name!r}")
    accepted = []
    for v in values:
        try:
            accepted.append(_coerce_value(parent, v, prefixed=False))
        except SpaceError:
            allowed = (
                ", ".join(map(repr, parent.choices))
                if parent.type == "categorical"
                else "true, false"
                if parent.type == "bool"
                else f"[{parent.low}, {parent.high}]"
            )
            raise SpaceError(
                f"{where}.condition: {v!r} is not a value of {parent_name!r} (allowed: {allowed})"
            ) from None
    return {parent_name: tuple(accepted)}


def _check_default(p: Param, default: Any, where: str) -> Any:
    try:
        value = _coerce_value(p, default, prefixed=False, strict=True)
    except SpaceError as exc:
        raise SpaceError(f"{where}.default: {exc}") from None
    if p.step is not None and not _on_grid(value, p.low, p.step):
        raise SpaceError(f"{where}.default: {default!r} is not on the grid low + k * {p.step}")
    return value


def _coerce_value(
    p: Param, value: Any, source: str | None = None, *, prefixed: bool = True, strict: bool = False
) -> Any:
    """Convert ``value`` to ``p``'s type and check it is in the space.

    ``strict`` refuses strings for numbers and booleans (used for YAML defaults). Errors are
    prefixed with ``"<source>: params.<name>: "`` when ``prefixed``.
    """

    def fail(msg: str) -> SpaceError:
        if not prefixed:
            return SpaceError(msg)
        prefix = f"{source}: " if source else ""
        return SpaceError(f"{prefix}params.{p.name}: {msg}")

    value = _py(value)
    if p.type == "bool":
        if isinstance(value, bool):
            return value
        if not strict:
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
        raise fail(f"{value!r} is not a boolean")
    if p.type == "categorical":
        for c in p.choices:
            if _same(value, c):
                return c
        if not strict and isinstance(value, str):
            for c in p.choices:
                if not isinstance(c, str) and _same(_parse_like(value, c), c):
                    return c
        raise fail(f"{value!r} is not one of {list(p.choices)}")
    # int / float
    if isinstance(value, str) and not strict:
        try:
            value = float(value.strip())
        except ValueError:
            raise fail(f"{value!r} is not a number")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(f"{value!r} is not a finite number")
    if p.type == "int":
        if isinstance(value, float) and not value.is_integer():
            raise fail(f"{value!r} is not an integer")
        value = int(value)
    else:
        value = float(value)
    slack = _REL_TOL * max(1.0, abs(p.low), abs(p.high))
    if not (p.low - slack <= value <= p.high + slack):
        raise fail(f"{value!r} is outside [{p.low}, {p.high}]")
    return value


def _parse_like(text: str, like: Any) -> Any:
    text = text.strip()
    if isinstance(like, bool):
        return {"true": True, "false": False}.get(text.lower(), text)
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if isinstance(like, int) and number.is_integer() else number


def _py(value: Any) -> Any:
    """A numpy scalar as the matching Python scalar; anything else unchanged."""
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from numbers and tolerates float round-off."""
    a, b = _py(a), _py(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=0.0) or a == b
    return type(a) is type(b) and a == b


def _on_grid(value: float, low: float, step: float) -> bool:
    k = (value - low) / step
    return abs(k - round(k)) < 1e-8
