"""Transfer-learning models: a pretrained backbone (:mod:`~medtune.models.backbones`) under the custom CNN's head.

Layout::

    Input (0..255, 1 or 3 channels) -> BackbonePreprocess ``preprocess`` (grey -> RGB, the
    backbone's own preprocess_input) -> backbone (a nested model named ``backbone``, called
    with training=False so its BatchNorm layers always run in inference mode)
    -> GlobalAveragePooling -> Dropout -> Dense(dense_units, relu, L2) -> Dropout
    -> Dense(n_classes) ``logits`` -> softmax ``probs`` (float32)

(With random initial weights the backbone is called normally: its BatchNorm layers have no
pretrained statistics to protect and train like the rest, or nothing learns from scratch.)

Two-stage fine-tuning: :func:`set_stage` freezes the backbone (stage 1, head only) or unfreezes
its top ``fine_tune_layers`` layers, BatchNorm excepted (stage 2); :func:`stage_plan` says how a
budget of epochs splits between the stages and at which learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medtune.errors import ConfigError
from medtune.models.backbones import BACKBONE_LAYER, BACKBONE_SPECS, BackboneSpec, spec_of

__all__ = [
    "BACKBONE_SPECS",
    "BackboneSpec",
    "Stage",
    "build_transfer",
    "check_image_size",
    "set_stage",
    "spec_of",
    "stage_plan",
]

SCRATCH_BN_MOMENTUM = 0.9  # as the custom CNN; keras.applications use 0.99-0.999 for ImageNet runs


DEFAULTS: dict[str, Any] = {
    "dropout": 0.3,
    "l2": 1e-4,
    "dense_units": 256,
    "fine_tune_layers": 40,
    "fine_tune_lr_factor": 0.1,
    "head_epochs": 2,
}
"""Values used for head and fine-tuning parameters missing from ``params``."""


def check_image_size(backbone: str, image_size: int) -> None:
    """Raise a ConfigError naming the backbone and its minimum when ``image_size`` is too small."""
    spec = spec_of(backbone)
    if image_size < spec.min_size:
        raise ConfigError(
            f"image_size={image_size}: backbone {backbone} needs at least {spec.min_size} px; "
            f"raise the image size or drop {backbone} from the space"
        )


def build_transfer(
    params: Mapping[str, Any],
    input_shape: tuple[int, int, int],
    n_classes: int,
    weights_path: str | None = None,
):
    """Build (not compile) a transfer model, backbone frozen (stage 1).

    Args:
        params: ``backbone`` plus head values (``dropout``, ``l2``, ``dense_units``); other keys
            are ignored here.
        input_shape: ``(height, width, channels)`` with 1 or 3 channels, raw pixels 0..255.
        weights_path: a checked weights file for this backbone (see :mod:`medtune.models.weights`);
            None: random initialisation.

    Raises:
        ConfigError: an unknown backbone, an image below its minimum size, bad head values.
        medtune.models.weights.WeightsError: the weights file does not fit.
    """
    import keras
    from keras import regularizers

    from medtune.models.cnn import _float, _int
    from medtune.models.head import classifier_head
    from medtune.models.layers import BackbonePreprocess

    spec = spec_of(params.get("backbone"))
    p = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    dropout = _float(p, "dropout", 0.0, 1.0, high_open=True)
    l2 = _float(p, "l2", 0.0, math.inf)
    dense_units = _int(p, "dense_units", 1, 65536)
    try:
        h, w, c = (int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"input_shape: needs (height, width, channels) (got {input_shape!r})") from None
    if c not in (1, 3):
        raise ConfigError(f"input_shape: backbone {spec.name} takes 1 or 3 channels (got {c})")
    check_image_size(spec.name, min(h, w))
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ConfigError(f"n_classes: needs an integer >= 2 (got {n_classes!r})")

    base = spec.build((h, w, 3))
    if weights_path:
        from medtune.models.weights import load_backbone_weights

        load_backbone_weights(base, spec.name, weights_path)
    else:  # from scratch, moving statistics must catch up within a short trial (0.999: ~1000 steps)
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    base.trainable = False

    reg = regularizers.L2(l2) if l2 > 0 else None
    inputs = keras.Input(shape=(h, w, c), name="image")
    x = BackbonePreprocess(spec.name, dtype="float32", name="preprocess")(inputs)
    # Pretrained: BatchNorm always in inference mode, so fine-tuning keeps the ImageNet statistics.
    # Random weights (weights=none) have no statistics worth keeping: BatchNorm trains as usual.
    x = base(x, training=False) if weights_path else base(x)
    outputs = classifier_head(x, n_classes, dense_units=dense_units, dropout=dropout, regularizer=reg)
    model = keras.Model(inputs, outputs, name=f"{spec.name}_transfer")
    model.medtune_frozen_batchnorm = bool(weights_path)  # read by set_stage
    return model


# --------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class Stage:
    number: int  # 1: head only, 2: fine-tuning
    first_epoch: int  # 0-based, continuing across stages
    end_epoch: int  # exclusive
    learning_rate: float
    fine_tune_layers: int  # backbone layers unfrozen in this stage (0 in stage 1)

    @property
    def epochs(self) -> int:
        return self.end_epoch - self.first_epoch


def stage_plan(params: Mapping[str, Any], epochs: int) -> list[Stage]:
    """How ``epochs`` split between the stages.

    Custom CNN: one stage of all epochs. Transfer: stage 1 (head only) for ``head_epochs``
    (at most ``epochs``), then stage 2 for the rest at ``learning_rate x fine_tune_lr_factor``
    with the top ``fine_tune_layers`` unfrozen; no stage 2 when ``fine_tune_layers`` is 0 (the
    frozen backbone trains its head for all epochs).
    """
    from medtune.models.cnn import _float, _int

    lr = float(params.get("learning_rate", 1e-3))
    if params.get("backbone", "custom") == "custom":
        return [Stage(1, 0, epochs, lr, 0)]
    p = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    layers_ = _int(p, "fine_tune_layers", 0, 10_000)
    factor = _float(p, "fine_tune_lr_factor", 0.0, 1.0)
    head = _int(p, "head_epochs", 1, 10_000)
    if layers_ == 0 or head >= epochs or factor == 0:
        return [Stage(1, 0, epochs, lr, 0)]
    return [Stage(1, 0, head, lr, 0), Stage(2, head, epochs, lr * factor, layers_)]


def set_stage(model, stage: Stage) -> int:
    """Freeze or unfreeze the backbone for ``stage``; return the number of trainable layers.

    Stage 1 (or a model without a backbone, whose layers are left as they are) trains what is
    not the backbone; stage 2 also trains the top ``stage.fine_tune_layers`` backbone layers,
    BatchNorm layers excepted when the backbone is pretrained (they stay frozen, in inference
    mode); a randomly initialised backbone trains its BatchNorm layers too. Recompile afterwards.
    """
    import keras

    base = _backbone(model)
    frozen_bn = getattr(model, "medtune_frozen_batchnorm", True)
    if base is not None:
        if stage.fine_tune_layers <= 0:
            base.trainable = False
        else:
            base.trainable = True
            cut = max(0, len(base.layers) - stage.fine_tune_layers)
            for i, layer in enumerate(base.layers):
                is_bn = isinstance(layer, keras.layers.BatchNormalization)
                layer.trainable = i >= cut and not (frozen_bn and is_bn)
    return trainable_layer_count(model)


def trainable_layer_count(model) -> int:
    """Layers with trainable weights, counted inside nested models."""
    import keras

    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            count += trainable_layer_count(layer) if layer.trainable else 0
        elif layer.trainable and layer.trainable_weights:
            count += 1
    return count


def _backbone(model):
    try:
        return model.get_layer(BACKBONE_LAYER)
    except ValueError:
        return None
