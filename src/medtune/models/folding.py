"""Frozen BatchNorm folded into the convolution before it: the same function, fewer passes over memory.

A BatchNorm layer in inference mode is a per-channel affine map, ``y = x * s + t`` with
``s = gamma / sqrt(moving_variance + epsilon)`` and ``t = beta - moving_mean * s``. Run after a
convolution it reads and writes the whole feature map twice more (and once more in the backward
pass); on CPU that was 42 % of a Lite0 inference batch and 13 % of a stage-2 training step
(docs/performance.md). Folded, the convolution uses ``kernel * s`` and one bias ``t (+ bias * s)``:
the multiply touches the kernel, not the activations, and the bias joins the convolution.

:func:`fold_batchnorm` rewrites a functional model (nested models, ensembles and wrappers included)
so every convolution followed only by a *frozen* BatchNorm becomes one :class:`FoldedConv`. The
folded layer keeps the original convolution and BatchNorm as sublayers and reads their variables
at every call, so

* the function is unchanged (checked to 1e-5 by the tests) while the BatchNorm stays frozen;
* the gradient with respect to the convolution's kernel is the same one, so training the folded
  model trains the original's own variables (the two share them): stage 2 of a transfer model,
  whose pretrained BatchNorm is frozen, runs on the folded view and the original is what is saved;
* layer names are kept (a folded convolution is named as the convolution), so Grad-CAM finds the
  same feature maps.

Trainable BatchNorm layers (a network trained from scratch) are left as they are: in training mode
they normalise with each batch's own statistics, which no fold reproduces.
"""

from __future__ import annotations

import weakref

import keras
import tensorflow as tf

__all__ = ["FoldedConv", "fold_batchnorm", "foldable_pairs", "inference_view", "training_view"]

_INFERENCE_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@keras.saving.register_keras_serializable(package="medtune")
class FoldedConv(keras.layers.Layer):
    """A ``Conv2D`` or ``DepthwiseConv2D`` and the frozen ``BatchNormalization`` after it, as one op."""

    def __init__(self, conv, bn, **kwargs):
        kwargs.setdefault("name", conv.name)
        kwargs.setdefault("dtype", conv.dtype_policy)
        super().__init__(**kwargs)
        self.conv = conv
        self.bn = bn

    def build(self, input_shape):
        if not self.conv.built:
            self.conv.build(input_shape)
        if not self.bn.built:
            self.bn.build(self.conv.compute_output_shape(input_shape))
        self.built = True

    def _scale_shift(self):
        bn, conv = self.bn, self.conv
        f32 = lambda v: tf.cast(v, tf.float32)  # noqa: E731 (folded in float32 under any policy)
        scale = tf.math.rsqrt(f32(bn.moving_variance) + bn.epsilon)
        if bn.scale:
            scale = scale * f32(bn.gamma)
        shift = -f32(bn.moving_mean) * scale
        if bn.center:
            shift = shift + f32(bn.beta)
        if conv.use_bias:
            shift = shift + f32(conv.bias) * scale
        return scale, shift

    def call(self, inputs):
        conv = self.conv
        scale, shift = self._scale_shift()
        dtype = self.compute_dtype
        strides = (1, *conv.strides, 1)
        padding = conv.padding.upper()
        weights = tf.cast(conv.kernel, tf.float32)
        if isinstance(conv, keras.layers.DepthwiseConv2D):
            kh, kw, cin, mult = conv.kernel.shape
            kernel = weights * tf.reshape(scale, (1, 1, cin, mult))
            y = tf.nn.depthwise_conv2d(inputs, tf.cast(kernel, dtype), strides, padding, dilations=conv.dilation_rate)
        else:
            kernel = weights * scale
            y = tf.nn.conv2d(inputs, tf.cast(kernel, dtype), strides, padding, dilations=conv.dilation_rate)
        return tf.nn.bias_add(y, tf.cast(shift, dtype))

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config["conv"] = keras.saving.serialize_keras_object(self.conv)
        config["bn"] = keras.saving.serialize_keras_object(self.bn)
        return config

    @classmethod
    def from_config(cls, config):
        conv = keras.saving.deserialize_keras_object(config.pop("conv"))
        bn = keras.saving.deserialize_keras_object(config.pop("bn"))
        return cls(conv, bn, **config)


def _foldable_conv(layer) -> bool:
    if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
        return False
    if isinstance(layer, keras.layers.Conv2DTranspose) or layer.data_format != "channels_last":
        return False
    if getattr(layer, "groups", 1) != 1 or layer.activation not in (None, keras.activations.linear):
        return False
    return len(layer._inbound_nodes) == 1


def foldable_pairs(model, *, frozen_only: bool = True) -> dict[int, tuple]:
    """``{id(bn): (conv, bn)}`` for every BatchNorm (frozen ones only with ``frozen_only``) whose one
    input is a convolution's output that nothing else reads, in ``model`` and every functional model
    nested in it."""
    pairs: dict[int, tuple] = {}
    if not isinstance(model, keras.Model):  # a stand-in with predict_on_batch only
        return pairs
    for net in [model, *model._flatten_layers(include_self=False)]:
        if not isinstance(net, keras.Model) or not hasattr(net, "_nodes_by_depth"):
            continue
        readers: dict[int, int] = {}
        for layer in net.layers:
            for node in layer._inbound_nodes[:1]:
                for tensor in node.input_tensors:
                    readers[id(tensor)] = readers.get(id(tensor), 0) + 1
        for bn in net.layers:
            if not isinstance(bn, keras.layers.BatchNormalization) or (frozen_only and bn.trainable):
                continue
            if len(bn._inbound_nodes) != 1:
                continue
            if bn.axis not in (-1, [-1], 3, [3]):
                continue
            (tensor,) = bn._inbound_nodes[0].input_tensors
            conv = tensor._keras_history.operation
            if _foldable_conv(conv) and readers.get(id(tensor)) == 1:
                pairs[id(bn)] = (conv, bn)
    return pairs


def fold_batchnorm(model, *, frozen_only: bool = True):
    """``model`` with its frozen BatchNorm layers (every one with ``frozen_only=False``: for
    inference) folded into their convolutions (see the module).

    The result shares every variable with ``model`` (no copy): train it, and ``model`` is trained;
    save ``model``. A model with nothing to fold comes back as it is.
    """
    pairs = foldable_pairs(model, frozen_only=frozen_only)
    if not pairs:
        return model
    by_conv = {id(conv): bn for conv, bn in pairs.values()}
    folded: dict[int, FoldedConv] = {}

    def call(layer, *args, **kwargs):
        if id(layer) in pairs:  # the BatchNorm: already applied by the folded convolution
            return args[0]
        if id(layer) in by_conv:
            if id(layer) not in folded:
                folded[id(layer)] = FoldedConv(layer, by_conv[id(layer)])
            return folded[id(layer)](args[0])
        return layer(*args, **kwargs)

    view = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call, recursive=True)
    if hasattr(model, "medtune_frozen_batchnorm"):
        view.medtune_frozen_batchnorm = model.medtune_frozen_batchnorm
    return view


def training_view(model):
    """What a staged fit trains: ``model`` folded when its BatchNorm stays frozen in every stage (a
    pretrained backbone's), else ``model`` itself. One view serves all stages, so weights kept by
    one stage's callbacks fit the next."""
    return fold_batchnorm(model) if getattr(model, "medtune_frozen_batchnorm", False) else model


def inference_view(model):
    """``model`` with every BatchNorm folded, for prediction only; built once per model and kept
    while the model lives (the variables are shared, so later training shows through)."""
    try:
        view = _INFERENCE_VIEWS.get(model)
    except TypeError:  # not weakly referable: fold every time
        return fold_batchnorm(model, frozen_only=False)
    if view is None:
        view = fold_batchnorm(model, frozen_only=False)
        _INFERENCE_VIEWS[model] = view if view is not model else False  # (never the model itself: a leak)
    return model if view is False else view
