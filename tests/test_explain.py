"""Grad-CAM on tiny models: layer search, shapes, nested backbones, and one learning test."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from medtune.errors import ConfigError
from medtune.explain import find_last_conv_layer, gradcam, heatmap_concentration, overlay

pytestmark = pytest.mark.xdist_group("test_explain")  # one worker: the module's fixture built once

L = keras.layers


def _images(n=5, size=32, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels)).astype(np.uint8)


def plain_model():
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            L.Rescaling(1 / 255),
            L.Conv2D(8, 3, padding="same", activation="relu"),
            L.MaxPooling2D(),
            L.Conv2D(8, 3, padding="same"),
            L.BatchNormalization(),
            L.Activation("relu", name="last_act"),
            L.MaxPooling2D(),
            L.Flatten(),
            L.Dense(3, activation="softmax"),
        ]
    )


def residual_model():
    inp = keras.Input((32, 32, 3))
    x = L.Rescaling(1 / 255)(inp)
    x = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    y = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    y = L.Conv2D(8, 3, padding="same")(y)
    x = L.Add(name="res_add")([x, y])
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(3, activation="softmax")(x))


def separable_model():
    inp = keras.Input((32, 32, 3))
    x = L.Rescaling(1 / 255)(inp)
    x = L.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = L.SeparableConv2D(8, 3, activation="relu", name="sep")(x)
    x = L.Dropout(0.2)(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(3, activation="softmax")(x))


def nested_model():
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None, alpha=0.35)
    inp = keras.Input((32, 32, 3))
    x = L.Rescaling(1 / 127.5, offset=-1, name="pre")(inp)
    x = backbone(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dropout(0.2, name="drop")(x)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="head")(x))


@pytest.fixture(scope="module")
def nested():
    keras.utils.set_random_seed(1)
    return nested_model()


@pytest.mark.parametrize(
    ("build", "expected"),
    [(plain_model, ["last_act"]), (residual_model, ["res_add"]), (separable_model, ["sep"])],
)
def test_find_last_conv_layer_top_level(build, expected):
    assert find_last_conv_layer(build()) == expected


def test_find_last_conv_layer_inside_nested_backbone(nested):
    assert find_last_conv_layer(nested) == ["mobilenetv2_0.35_32", "out_relu"]


def test_find_last_conv_layer_without_conv_raises():
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Flatten(), L.Dense(2)])
    with pytest.raises(ConfigError):
        find_last_conv_layer(model)


@pytest.mark.parametrize("build", [plain_model, residual_model, separable_model])
def test_gradcam_shapes_range_and_no_nan(build):
    keras.utils.set_random_seed(0)
    model = build()
    heat, proba = gradcam(model, _images(5), batch_size=2)
    assert heat.shape == (5, 32, 32) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    assert proba.shape == (5, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    expected = model(_images(5).astype("float32"), training=False).numpy()
    np.testing.assert_allclose(proba, expected, atol=1e-5)
    assert "call" not in vars(model.get_layer(find_last_conv_layer(model)[-1]))  # unwrapped


def test_gradcam_nested_backbone_matches_split_reference(nested):
    """The captured inner feature map gives the same CAM as an explicitly split forward pass."""
    backbone = nested.get_layer("mobilenetv2_0.35_32")
    target = "block_6_expand_relu"  # 4x4 at a 32x32 input (out_relu is 1x1)
    images = _images(3, seed=2)
    classes = [0, 2, 1]
    heat, proba = gradcam(nested, images, classes, layer_path=[backbone.name, target])

    split = keras.Model(backbone.inputs, [backbone.get_layer(target).output, backbone.output])
    x = tf.constant(images, tf.float32)
    with tf.GradientTape() as tape:
        feat, inner = split(nested.get_layer("pre")(x), training=False)
        head = nested.get_layer("head")
        logits = nested.get_layer("gap")(inner) @ head.kernel + head.bias  # score before softmax
        score = tf.reduce_sum(tf.gather(logits, classes, axis=1, batch_dims=1))
    grads = tape.gradient(score, feat)
    cam = tf.nn.relu(tf.reduce_sum(tf.reduce_mean(grads, (1, 2), keepdims=True) * feat, -1))
    cam = (cam / tf.reduce_max(cam, axis=(1, 2), keepdims=True)).numpy()
    expected = tf.image.resize(cam[..., None], (32, 32)).numpy()[..., 0]

    assert heat.shape == (3, 32, 32) and np.isfinite(heat).all()
    assert heat.max() == pytest.approx(1.0, abs=1e-4) and heat.std() > 0
    np.testing.assert_allclose(heat, expected, atol=1e-4)
    np.testing.assert_allclose(proba, nested(x, training=False).numpy(), atol=1e-5)
    assert head.activation is keras.activations.softmax  # restored after the pass
    assert "call" not in vars(backbone.get_layer(target))


def test_gradcam_nested_default_layer(nested):
    heat, proba = gradcam(nested, _images(4))
    assert heat.shape == (4, 32, 32) and proba.shape == (4, 3)
    assert np.isfinite(heat).all() and 0.0 <= heat.min() <= heat.max() <= 1.0


def test_gradcam_zero_gradients_give_zeros():
    model = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            L.Conv2D(4, 3, activation="relu"),
            L.GlobalAveragePooling2D(),
            L.Dense(2, activation="softmax", kernel_initializer="zeros"),
        ]
    )
    heat, proba = gradcam(model, _images(2, 16, 1)[..., 0])  # grey (N, H, W) input
    assert heat.shape == (2, 16, 16) and not heat.any()
    np.testing.assert_allclose(proba, 0.5)


def test_gradcam_sigmoid_output_gives_two_class_probabilities():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((16, 16, 1)), L.Conv2D(4, 3), L.GlobalAveragePooling2D(), L.Dense(1, activation="sigmoid")]
    )
    heat, proba = gradcam(model, _images(3, 16, 1), class_indices=[0, 1, 1])
    assert heat.shape == (3, 16, 16) and proba.shape == (3, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


def test_gradcam_logits_output_gives_softmax_probabilities():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), L.Conv2D(4, 3), L.GlobalAveragePooling2D(), L.Dense(3)])
    heat, proba = gradcam(model, _images(2, 16))
    np.testing.assert_allclose(proba, tf.nn.softmax(model(_images(2, 16).astype("float32"))), atol=1e-5)
    assert heat.shape == (2, 16, 16) and np.isfinite(heat).all()


def test_gradcam_rejects_bad_class_indices():
    model = residual_model()
    with pytest.raises(ConfigError):
        gradcam(model, _images(2), class_indices=[0, 3])
    with pytest.raises(ConfigError):
        gradcam(model, _images(2), class_indices=[0])
    with pytest.raises(ConfigError):
        gradcam(model, _images(2), layer_path=["nope"])


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1), (8, 8, 3)])
def test_overlay_accepts_grey_and_rgb(shape):
    image = np.full(shape, 100, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    out = overlay(image, heat, alpha=0.5)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[0, 0], out[7, 7])  # hot corner differs from cold corner


def test_heatmap_concentration():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True  # a quarter of the image
    assert heatmap_concentration(np.ones((4, 4)), mask) == pytest.approx(1.0)
    assert heatmap_concentration(mask.astype(float), mask) == pytest.approx(4.0)
    assert np.isnan(heatmap_concentration(np.zeros((4, 4)), mask))
    with pytest.raises(ConfigError):
        heatmap_concentration(np.ones((4, 4)), np.zeros((4, 4), bool))


def test_the_lesion_focus_control_catches_a_heatmap_that_only_favours_the_centre():
    """`synthetic` lesions cluster near the centre: a fixed centre box beats a uniform map against
    each image's own mask, but not against other images' masks; the true footprint beats both."""
    from medtune.datasets.synthetic import generate
    from tests.helpers import lesion_focus

    _, _, masks = generate(20, 64, seed=5)
    box = np.zeros((len(masks), 64, 64))
    box[:, 21:43, 21:43] = 1.0  # the middle ninth
    own, control = lesion_focus(box, masks)
    assert own > 3.0 and own == pytest.approx(control, rel=0.1)  # "concentrated", yet blind
    own, control = lesion_focus(masks.astype(float), masks)
    assert own > 3.0 * control


# --- learning test: Grad-CAM of a trained model points at the object -------------------------

SIZE, OBJ = 48, 12


def _shapes_dataset(n, rng, with_empty=True):
    """Grey noise with a bright hollow square (class 0), a plus-shaped cross (class 1) or
    nothing (class 2). The empty class makes the net detect both shapes positively, rather than
    learning one detector and calling its absence the other class."""
    images = rng.uniform(0, 90, (n, SIZE, SIZE)).astype(np.float32)
    masks = np.zeros((n, SIZE, SIZE), bool)
    labels = rng.integers(0, 3 if with_empty else 2, n)
    mid = OBJ // 2
    for i in np.flatnonzero(labels < 2):
        r, c = rng.integers(1, SIZE - OBJ - 1, 2)
        patch = np.zeros((OBJ, OBJ), bool)
        if labels[i] == 0:
            patch[:2, :] = patch[-2:, :] = patch[:, :2] = patch[:, -2:] = True
        else:
            patch[mid - 1 : mid + 1, :] = patch[:, mid - 1 : mid + 1] = True
        images[i, r : r + OBJ, c : c + OBJ][patch] = 255.0
        masks[i, r : r + OBJ, c : c + OBJ] = True
    return images[..., None], labels, masks


def test_gradcam_of_trained_model_concentrates_on_object():
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x, y, _ = _shapes_dataset(600, rng)
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 1)),
            L.Rescaling(1 / 255),
            L.Conv2D(8, 3, padding="same", activation="relu"),
            L.MaxPooling2D(),
            L.Conv2D(16, 3, padding="same", activation="relu"),
            L.MaxPooling2D(),
            L.Conv2D(16, 3, padding="same", activation="relu"),
            L.GlobalAveragePooling2D(),
            L.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=10, verbose=0)

    xt, yt, masks = _shapes_dataset(48, rng, with_empty=False)
    heat, proba = gradcam(model, xt, class_indices=yt)
    assert (proba.argmax(1) == yt).mean() >= 0.9  # the task was learned
    conc = [heatmap_concentration(h, m) for h, m in zip(heat, masks)]
    # the object covers 1/16 of the image; uniform heat would give 1.0
    assert np.nanmean(conc) > 1.5, conc
