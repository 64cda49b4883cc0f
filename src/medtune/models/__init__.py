"""Model builders: ``build_model(params, input_shape, n_classes)`` picks one by ``backbone``.

``custom`` is the CNN of :mod:`medtune.models.cnn`; every other name is a backbone of the table in
:mod:`medtune.models.backbones` under the same head (:mod:`medtune.models.transfer`), initialised
from :mod:`medtune.models.weights`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from medtune.models.backbones import BACKBONE_SPECS

__all__ = ["BACKBONES", "backbones_of", "build_model", "check_image_size"]

BACKBONES = ("custom", *BACKBONE_SPECS)
"""Values of the ``backbone`` parameter that :func:`build_model` can build."""


def build_model(
    params: Mapping[str, Any],
    input_shape: tuple[int, int, int],
    n_classes: int,
    weights: Mapping[str, Any] | None = None,
):
    """Build an uncompiled ``keras.Model`` for ``params["backbone"]`` (default ``custom``).

    The model takes raw pixel values 0..255 of shape ``input_shape`` and outputs float32
    class probabilities. ``weights`` maps backbone names to resolved
    :class:`~medtune.models.weights.WeightsFile` s (see ``resolve_weights``); a backbone absent
    from it starts from random weights. A transfer model comes back in stage 1 (backbone frozen).

    Raises:
        ConfigError: an unknown backbone or an invalid parameter value.
    """
    backbone = params.get("backbone", "custom")
    if backbone == "custom":
        from medtune.models.cnn import build_cnn  # late: keeps `import medtune.models` light

        return build_cnn(params, input_shape, n_classes)
    from medtune.models.transfer import build_transfer  # an unknown name: ConfigError listing BACKBONES

    source = (weights or {}).get(backbone)
    return build_transfer(params, input_shape, n_classes, weights_path=source.path if source else None)


def backbones_of(space_or_params) -> list[str]:
    """Backbones a search space can pick (its ``backbone`` choices) or a params dict names."""
    if isinstance(space_or_params, Mapping):
        return [space_or_params.get("backbone", "custom")]
    if "backbone" not in space_or_params:
        return ["custom"]
    param = space_or_params["backbone"]
    return list(param.choices) if param.type == "categorical" else [param.default_value()]


def check_image_size(backbones: Iterable[str], image_size: int) -> None:
    """A clear error before any trial when a backbone needs more pixels than ``image_size``."""
    from medtune.models.transfer import check_image_size as check

    for name in backbones:
        if name != "custom":
            check(name, image_size)  # an unknown name: ConfigError listing BACKBONES


def float32_copy(model, params: Mapping[str, Any], input_shape: tuple, n_classes: int):
    """The same network and weights under the float32 policy (for a model trained in mixed precision).

    A mixed-precision model computes in float16, which CPUs (where it is usually served) run
    slowly or not at all; the variables are float32 either way, so the weights copy over exactly.
    """
    import keras

    keras.mixed_precision.set_global_policy("float32")
    copy = build_model(params, input_shape, n_classes)
    copy.set_weights(model.get_weights())
    return copy
