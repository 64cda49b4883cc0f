"""Input pipeline, compile, fit with validation scores, divergence, prediction."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from medtune import training
from medtune.errors import ConfigError, DataError
from medtune.models import build_model
from medtune.training import (
    EpochScores,
    NaNGuard,
    TrainingDiverged,
    balanced_class_weights,
    compile_model,
    fit,
    make_dataset,
    predict_proba,
)

pytestmark = pytest.mark.xdist_group("test_training")  # one worker: the module's fixture built once

TINY = {"num_blocks": 2, "filters": 4, "dense_units": 8, "dropout": 0.0}
SHAPE = (16, 16, 3)


@pytest.fixture(scope="module", autouse=True)
def free_memory_once():
    yield
    training.release_model()


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, *SHAPE), dtype=np.uint8)
    y = np.arange(24) % 3
    return x, y


@pytest.fixture
def memmap(tmp_path, data):
    x, y = data
    path = tmp_path / "x.npy"
    np.save(path, x)
    return np.load(path, mmap_mode="r"), y


def batches(ds):
    return [(a.numpy(), b.numpy()) for a, b in ds]


def stacked(ds):
    bs = batches(ds)
    return np.concatenate([a for a, _ in bs]), np.concatenate([b for _, b in bs])


# --------------------------------------------------------------------------- make_dataset


def test_eval_dataset_keeps_order_dtypes_and_one_hot(data):
    x, y = data
    ds = make_dataset(x, y, 3, 10, training=False)
    sizes = [len(a) for a, _ in batches(ds)]
    assert sizes == [10, 10, 4]
    images, labels = stacked(ds)
    assert images.dtype == np.float32 and labels.dtype == np.float32
    np.testing.assert_array_equal(images, x.astype(np.float32))
    np.testing.assert_array_equal(labels, np.eye(3, dtype=np.float32)[y])
    assert ds.element_spec[0].shape.as_list() == [None, *SHAPE]


def test_eval_dataset_ignores_augment(data):
    x, y = data
    images, _ = stacked(make_dataset(x, y, 3, 8, training=False, augment=0.5))
    np.testing.assert_array_equal(images, x.astype(np.float32))


def test_training_dataset_reshuffles_each_epoch_keeping_pairs(data):
    x = np.arange(24, dtype=np.uint8)[:, None, None, None] * np.ones((1, *SHAPE), np.uint8)
    y = np.arange(24)  # one class per image, so the label names the image
    ds = make_dataset(x, y, 24, 5, training=True, seed=3)
    epoch1, epoch2 = stacked(ds), stacked(ds)
    for images, labels in (epoch1, epoch2):
        rows = labels.argmax(1)
        assert sorted(rows) == list(range(24))
        np.testing.assert_array_equal(images[:, 0, 0, 0], rows)  # image i carries value i
    assert not np.array_equal(epoch1[1], epoch2[1])
    again = stacked(make_dataset(x, y, 24, 5, training=True, seed=3))
    np.testing.assert_array_equal(again[1], epoch1[1])


def test_no_augmentation_at_strength_zero(data):
    x, y = data
    ds = make_dataset(x, np.arange(24), 24, 8, training=True, augment=0.0, seed=1)
    images, labels = stacked(ds)
    np.testing.assert_array_equal(images, x[labels.argmax(1)].astype(np.float32))


def test_augmentation_is_deterministic_given_seed_and_varies_otherwise(data):
    x, y = data
    first = stacked(make_dataset(x, y, 3, 8, training=True, augment=0.5, seed=7))
    same = stacked(make_dataset(x, y, 3, 8, training=True, augment=0.5, seed=7))
    other = stacked(make_dataset(x, y, 3, 8, training=True, augment=0.5, seed=8))
    np.testing.assert_array_equal(first[0], same[0])
    np.testing.assert_array_equal(first[1], same[1])
    assert not np.array_equal(first[0], other[0])
    images = first[0]
    assert images.shape == (24, *SHAPE) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 255.0


def test_augmentation_changes_images(data):
    x, _ = data
    ds = make_dataset(x, np.arange(24), 24, 24, training=True, augment=0.5, seed=0)
    images, labels = stacked(ds)
    original = x[labels.argmax(1)].astype(np.float32)
    assert np.abs(images - original).mean() > 5.0


def test_tiny_strength_is_identity_or_horizontal_mirror():
    # checks the affine maths: with (almost) no rotation/zoom/shift only flips remain
    x = np.random.default_rng(1).integers(0, 256, (2, 6, 5, 1), dtype=np.uint8)
    seeds = [tf.constant([s, 0], tf.int64) for s in range(8)]
    flips = 0
    for seed in seeds:
        out = training.augment_batch(tf.constant(x, tf.float32), seed, 1e-7).numpy()
        for got, img in zip(out, x.astype(np.float32)):
            mirrored = np.allclose(got, img[:, ::-1], atol=1e-2)
            assert mirrored or np.allclose(got, img, atol=1e-2)
            flips += mirrored
    assert 0 < flips < 16


def test_make_dataset_reads_a_read_only_memmap(memmap):
    x, y = memmap
    assert isinstance(x, np.memmap) and not x.flags.writeable
    images, _ = stacked(make_dataset(x, y, 3, 7, training=True, augment=0.2))
    assert images.shape == (24, *SHAPE)
    images, _ = stacked(make_dataset(x, y, 3, 7, training=False))
    np.testing.assert_array_equal(images, np.asarray(x, np.float32))


def test_pipelines_run_without_the_autotuning_thread(memmap):
    """tf.data's autotuning thread stalled trials by ~13 s at the end of fit (see training.py)."""
    x, y = memmap
    for ds in (make_dataset(x, y, 3, 7, training=True, augment=0.2), make_dataset(x, y, 3, 7, training=False)):
        assert ds.options().autotune.enabled is False  # (predict_proba runs no tf.data pipeline at all)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"x": np.zeros((4, 8, 8), np.uint8)}, DataError),
        ({"y": np.zeros(3, int)}, DataError),
        ({"y": np.array([0, 1, 2, 3])}, DataError),
        ({"y": np.array([0.0, 1.0, 1.0, 0.0])}, DataError),
        ({"x": np.zeros((0, 8, 8, 1), np.uint8), "y": np.zeros(0, int)}, DataError),
        ({"batch_size": 0}, ConfigError),
        ({"augment": 1.5}, ConfigError),
    ],
)
def test_make_dataset_rejects_bad_inputs(kwargs, error):
    args = {"x": np.zeros((4, 8, 8, 1), np.uint8), "y": np.array([0, 1, 2, 0]), "batch_size": 2, "augment": 0.0}
    args.update(kwargs)
    with pytest.raises(error):
        make_dataset(args["x"], args["y"], 3, args["batch_size"], training=True, augment=args["augment"])


# --------------------------------------------------------------------------- class weights


def test_balanced_class_weights_follow_sklearn_and_absent_class_gets_one():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0, 0, 0, 0, 1, 1, 3, 3])
    weights = balanced_class_weights(y, 4)
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 3]), y=y)
    assert list(weights) == [0, 1, 2, 3]
    assert weights[2] == 1.0
    np.testing.assert_allclose([weights[0], weights[1], weights[3]], expected)
    assert all(isinstance(k, int) and isinstance(v, float) for k, v in weights.items())


# --------------------------------------------------------------------------- compile


@pytest.mark.parametrize(
    "params, cls",
    [
        ({"optimizer": "adam", "learning_rate": 5e-4}, keras.optimizers.Adam),
        ({"optimizer": "rmsprop", "learning_rate": 1e-4}, keras.optimizers.RMSprop),
        ({"optimizer": "sgd", "learning_rate": 1e-3, "momentum": 0.95}, keras.optimizers.SGD),
        ({}, keras.optimizers.Adam),
    ],
)
def test_compile_model_with_each_optimizer(params, cls):
    model = compile_model(build_model(TINY, SHAPE, 3), {**params, "label_smoothing": 0.1})
    assert isinstance(model.optimizer, cls)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(params.get("learning_rate", 1e-3))
    if cls is keras.optimizers.SGD:
        assert model.optimizer.momentum == pytest.approx(0.95)
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "params, name",
    [
        ({"optimizer": "adagrad"}, "optimizer"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"optimizer": "sgd", "momentum": 1.2}, "momentum"),
    ],
)
def test_compile_model_rejects_bad_values(params, name):
    with pytest.raises(ConfigError, match=f"^{name}:"):
        compile_model(build_model(TINY, SHAPE, 3), params)


# --------------------------------------------------------------------------- fit


class LogsSpy(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.keys = []

    def on_epoch_end(self, epoch, logs=None):
        self.keys.append(set(logs))


def test_fit_one_epoch_returns_history_with_validation_scores(data):
    x, y = data
    train = make_dataset(x, y, 3, 8, training=True, augment=0.2)
    val = make_dataset(x[:9], y[:9], 3, 4, training=False)
    model = compile_model(build_model(TINY, SHAPE, 3), {})
    spy = LogsSpy()
    history = fit(model, train, val, y_val=y[:9], epochs=1, class_weight=balanced_class_weights(y, 3), callbacks=[spy])
    for key in (
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "val_macro_f1",
        "val_balanced_accuracy",
        "epoch_seconds",
    ):
        assert len(history[key]) == 1 and isinstance(history[key][0], float), key
    assert 0.0 <= history["val_macro_f1"][0] <= 1.0
    assert history["epoch_seconds"][0] > 0
    assert {"val_macro_f1", "val_balanced_accuracy", "epoch_seconds"} <= spy.keys[0]  # seen by later callbacks


def test_one_validation_pass_gives_the_val_loss_and_accuracy_keras_would(data):
    """EpochScores replaces Keras's own validation pass: same val_loss (label smoothing and L2
    included) and val_accuracy as model.evaluate, and the final model's probabilities kept."""
    x, y = data
    val = make_dataset(x[:9], y[:9], 3, 4, training=False)
    model = compile_model(build_model({**TINY, "l2": 1e-2}, SHAPE, 3), {"label_smoothing": 0.1})
    scorer = EpochScores(val, y[:9])
    history = fit(model, make_dataset(x, y, 3, 8, training=True), val, y_val=y[:9], epochs=2, callbacks=[scorer])
    keras_loss, keras_accuracy = model.evaluate(val, verbose=0)
    assert history["val_loss"][-1] == pytest.approx(keras_loss, rel=1e-4)
    assert history["val_accuracy"][-1] == pytest.approx(keras_accuracy, abs=1e-6)
    np.testing.assert_allclose(scorer.last_proba, model.predict(val, verbose=0), atol=1e-6)


def test_validation_scores_match_sklearn():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    probs[5] = np.nan  # a diverged model: NaN rows count as class 0
    got = training.validation_scores(y, probs)
    pred = [0, 1, 1, 1, 2, 0]
    assert got["val_macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert got["val_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))


def nan_model() -> keras.Model:
    inputs = keras.Input(SHAPE)
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dense(3)(x)
    x = keras.layers.Lambda(lambda t: t * float("nan"))(x)
    return keras.Model(inputs, keras.layers.Activation("softmax")(x))


def test_fit_raises_training_diverged_when_model_outputs_nan(data):
    x, y = data
    train = make_dataset(x, y, 3, 4, training=True)
    val = make_dataset(x[:6], y[:6], 3, 6, training=False)
    model = compile_model(nan_model(), {})
    with pytest.raises(TrainingDiverged, match="loss became nan in epoch 1") as info:
        fit(model, train, val, y_val=y[:6], epochs=3, class_weight=None)
    assert isinstance(info.value, RuntimeError)
    assert info.value.epoch == 0
    assert len(info.value.history["loss"]) == 1  # stopped in the first epoch


def test_fit_raises_training_diverged_with_absurd_learning_rate(data):
    x, y = data
    train = make_dataset(x, y, 3, 4, training=True)
    val = make_dataset(x[:6], y[:6], 3, 6, training=False)
    model = compile_model(
        build_model({**TINY, "batch_norm": False}, SHAPE, 3), {"optimizer": "sgd", "learning_rate": 1e15}
    )
    with pytest.raises(TrainingDiverged):
        fit(model, train, val, y_val=y[:6], epochs=3, class_weight=None)


def test_nan_guard_checks_every_n_batches():
    guard = NaNGuard(check_every=3)
    guard.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    guard.on_train_batch_end(0, {"loss": float("nan")})
    assert not guard.diverged  # not a checking batch
    guard.on_train_batch_end(2, {"loss": float("inf")})
    assert guard.diverged and guard.model.stop_training


def test_epoch_scores_is_a_callback():
    assert issubclass(EpochScores, keras.callbacks.Callback)


# --------------------------------------------------------------------------- predict / threads


def test_predict_proba_on_memmap_matches_model(memmap):
    x, _ = memmap
    model = build_model(TINY, SHAPE, 3)
    probs = predict_proba(model, x, batch_size=10)
    assert probs.shape == (24, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probs, np.asarray(model(np.asarray(x), training=False)), rtol=1e-4, atol=1e-6)
    assert predict_proba(model, x[:0]).shape == (0, 3)


def test_configure_threads_is_safe_to_call_twice():
    first = training.configure_threads()
    second = training.configure_threads(intra=1, inter=1)  # TF already running: kept as is
    assert all(isinstance(v, int) and v >= 0 for v in first + second)
    assert training.usable_cpus() >= 1


def test_release_model_runs():
    model = build_model(TINY, SHAPE, 3)
    training.release_model(model)


# --- precise BatchNorm: statistics re-estimated on clean training images --------------------


def _bn_model(shape=(4, 4, 3)):
    inputs = keras.Input(shape)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_reestimate_batchnorm_sets_the_mean_of_per_batch_statistics():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 4, 4, 3)).astype(np.float32)
    images[6:] += 40.0  # the two batches differ
    model = _bn_model()
    bn = model.get_layer("bn")
    assert training.reestimate_batchnorm(model, images, batch_size=6) == 1
    halves = [images[:6], images[6:]]
    mean = np.mean([h.mean(axis=(0, 1, 2)) for h in halves], axis=0)
    var = np.mean([h.var(axis=(0, 1, 2)) for h in halves], axis=0)
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-4)
    assert bn.momentum == 0.9  # restored


def test_reestimate_batchnorm_leaves_frozen_layers_and_models_without_batchnorm_alone():
    images = np.full((8, 4, 4, 3), 200.0, np.float32)
    model = _bn_model()
    bn = model.get_layer("bn")
    bn.trainable = False
    assert training.reestimate_batchnorm(model, images) == 0
    np.testing.assert_array_equal(bn.moving_mean.numpy(), np.zeros(3))
    plain = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    assert training.reestimate_batchnorm(plain, images) == 0
    assert training.reestimate_batchnorm(_bn_model(), images[:1]) == 0  # one image has no variance


def test_precise_batchnorm_runs_before_the_validation_pass_and_validates_on_clean_statistics():
    """Trained on brightened (augmented) images, validated on clean ones: the validation pass
    must see statistics of the clean training images, not of the last augmented batches."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 100, (32, 4, 4, 3)).astype(np.uint8)
    y = np.arange(32) % 2
    shifted = tf.data.Dataset.from_tensor_slices((x.astype(np.float32) + 150.0, np.eye(2, dtype=np.float32)[y]))
    model = compile_model(_bn_model(), {"learning_rate": 1e-3})
    order = []

    class Scores(EpochScores):
        def on_epoch_end(self, epoch, logs=None):
            order.append(("scores", float(model.get_layer("bn").moving_mean.numpy().mean())))
            super().on_epoch_end(epoch, logs)

    class Precise(training.PreciseBatchNorm):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            order.append(("bn", None))

    val = make_dataset(x, y, 2, 16, training=False)
    fit(
        model, shifted.batch(8), val, y_val=y, epochs=2, callbacks=[Scores(val, y), Precise(x, images=16, batch_size=8)]
    )
    assert [name for name, _ in order] == ["bn", "scores", "bn", "scores"]
    clean_mean = float(x[Precise(x, images=16).index].astype(np.float32).mean())
    for name, seen in order:
        if name == "scores":
            assert seen == pytest.approx(clean_mean, rel=1e-4)  # not ~150 higher


def test_precise_batchnorm_sample_is_fixed_and_bounded():
    x = np.zeros((1000, 4, 4, 3), np.uint8)
    a, b = training.PreciseBatchNorm(x, images=64, seed=3), training.PreciseBatchNorm(x, images=64, seed=3)
    assert len(a.index) == 64 and np.array_equal(a.index, b.index) and np.all(np.diff(a.index) > 0)
    assert len(training.PreciseBatchNorm(x[:10], images=64).index) == 10


def test_cosine_schedule_with_warmup_and_adamw_drive_the_optimizer():
    """`lr_schedule: cosine` sets each epoch's rate (warm-up in the last stage); `optimizer: adamw` decays weights."""
    import keras
    import numpy as np
    import pytest

    from medtune import training
    from medtune.errors import ConfigError
    from medtune.models import build_model

    cos = training.EpochCosine(first=2, end=8, base_lr=1.0, warmup=2)
    assert [round(cos.rate(e), 3) for e in range(2, 8)] == [0.333, 0.667, 1.0, 0.854, 0.5, 0.146]
    params = {
        "num_blocks": 1,
        "filters": 4,
        "dense_units": 8,
        "optimizer": "adamw",
        "weight_decay": 1e-3,
        "learning_rate": 0.01,
        "lr_schedule": "cosine",
        "warmup_epochs": 1,
        "batch_size": 4,
    }
    model = training.compile_model(build_model(params, (16, 16, 1), 2), params)
    assert isinstance(model.optimizer, keras.optimizers.AdamW) and model.optimizer.weight_decay == pytest.approx(1e-3)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (8, 16, 16, 1)).astype(np.uint8), np.array([0, 1] * 4)
    ds = training.make_dataset(x, y, 2, 4, training=True)
    history = training.fit_stages(
        model, params, ds, training.make_dataset(x, y, 2, 4, training=False), y_val=y, epochs=4
    )
    assert history["learning_rate"] == pytest.approx([0.005, 0.01, 0.0075, 0.0025])  # 1 warm-up epoch, then a cosine
    with pytest.raises(ConfigError, match="lr_schedule: 'step' is not constant or cosine"):
        training.schedule_callbacks({"lr_schedule": "step"}, 0, 3, 1e-3)
    with pytest.raises(ConfigError, match="optimizer: 'lion' is not adam, adamw"):
        training.compile_model(model, {"optimizer": "lion"})
    training.release_model()


@pytest.mark.parametrize("compile_it", [True, False])
def test_prepare_fit_builds_what_trials_and_final_training_share(memmap, compile_it):
    x, y = memmap
    params = {"num_blocks": 2, "filters": 4, "dense_units": 8, "learning_rate": 1e-3, "batch_size": 8, "augment": 0.1}
    setup = training.prepare_fit(params, x, y, x[:8], y[:8], 3, seed=1, class_weights=True, compile=compile_it)
    assert setup.model.input_shape[1:] == SHAPE and setup.model.output_shape[-1] == 3
    assert setup.model.compiled is compile_it  # a later resolution rung continues a compiled training
    counts = np.bincount(y, minlength=3)
    assert setup.class_weight == pytest.approx({k: len(y) / (3 * counts[k]) for k in range(3)})
    assert [type(cb) for cb in setup.callbacks] == [training.PreciseBatchNorm]
    images, labels = next(iter(setup.train_ds))
    assert images.shape == (8, *SHAPE) and labels.shape == (8, 3)
    history = training.fit_stages(
        setup.model, params, setup.train_ds, setup.val_ds, y_val=y[:8], epochs=1, callbacks=setup.callbacks
    )
    assert len(history["val_macro_f1"]) == 1


def test_mix_batch_mixes_images_and_labels_with_one_weight():
    from medtune.training.data import mix_batch

    images = tf.constant(np.stack([np.full((4, 4, 1), v, np.float32) for v in (0.0, 100.0, 200.0)]))
    labels = tf.one_hot([0, 1, 2], 3)
    mixed, mixed_labels = mix_batch(images, labels, tf.constant([3, 4]), alpha=0.4)
    lam = float(mixed_labels[0, 0])  # image 0 mixed with image 2: label 0 keeps lam, label 2 gets 1 - lam
    assert 0.0 <= lam <= 1.0
    np.testing.assert_allclose(mixed_labels.numpy().sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(mixed_labels[0, 2]), 1.0 - lam, rtol=1e-5)
    np.testing.assert_allclose(mixed.numpy()[0], lam * 0.0 + (1 - lam) * 200.0, rtol=1e-4)
    np.testing.assert_allclose(mixed.numpy()[1], 100.0, rtol=1e-5)  # the middle image meets itself
    again, _ = mix_batch(images, labels, tf.constant([3, 4]), alpha=0.4)
    np.testing.assert_array_equal(again.numpy(), mixed.numpy())  # stateless: same seed, same mix


def test_compile_model_with_ema_averages_weights():
    model = compile_model(build_model(TINY, SHAPE, 3), {"optimizer": "adamw", "ema": True})
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == 0.99
    assert not compile_model(build_model(TINY, SHAPE, 3), {}).optimizer.use_ema
    with pytest.raises(ConfigError, match="ema_momentum: needs a number in"):
        compile_model(build_model(TINY, SHAPE, 3), {"ema": True, "ema_momentum": 1.5})


def test_averaged_weights_are_validated_kept_and_shipped_however_training_stops(data):
    """With `ema`, every callback after the swap sees the averaged weights at an epoch's end, the
    next epoch trains on from the raw ones, and the model fit returns holds the average, also
    when a callback stops training early."""
    x, y = data
    params = {**TINY, "learning_rate": 0.05, "ema": True, "ema_momentum": 0.9}
    model = compile_model(build_model(TINY, SHAPE, 3), params)
    seen = []

    def averages():
        return [a.numpy() for a in model.optimizer._model_variables_moving_average]

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch:
                seen.append(("begin", [w.numpy() for w in model.trainable_weights]))

        def on_epoch_end(self, epoch, logs=None):
            seen.append(("end", [w.numpy() for w in model.trainable_weights], averages()))
            model.stop_training = epoch == 1  # stopped early, as a time limit or pruner would

    ds = make_dataset(x, y, 3, 4, training=True)
    history = fit(model, ds, make_dataset(x, y, 3, 8, training=False), y_val=y, epochs=4, callbacks=[Probe()])
    assert len(history["val_macro_f1"]) == 2
    assert model.optimizer.ema_momentum == pytest.approx(1 - 1 / 6)  # 6 steps an epoch: at most an epoch's memory
    (_, end0, avg0), (_, begin1), (_, end1, avg1) = seen
    for got, want in [*zip(end0, avg0), *zip(end1, avg1)]:
        np.testing.assert_array_equal(got, want)  # the callbacks saw the average
    assert any(not np.allclose(b, a) for b, a in zip(begin1, avg0))  # and training went on from the raw weights
    for got, want in zip(model.trainable_weights, avg1):
        np.testing.assert_array_equal(got.numpy(), want)  # the model shipped is the average


def test_averaged_weights_under_mixed_precision(data):
    """Mixed precision wraps the optimiser in loss scaling: the average is still found and shipped."""
    x, y = data
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = compile_model(build_model(TINY, SHAPE, 3), {"ema": True})
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert training.callbacks.averaging_optimizer(model) is model.optimizer.inner_optimizer
        seen = []

        class Probe(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                averages = model.optimizer.inner_optimizer._model_variables_moving_average
                seen.append(
                    all(np.array_equal(w.numpy(), a.numpy()) for w, a in zip(model.trainable_weights, averages))
                )

        fit(model, make_dataset(x, y, 3, 4, training=True), make_dataset(x, y, 3, 8, training=False), y_val=y,
            epochs=2, callbacks=[Probe()])  # fmt: skip
        assert seen == [True, True]
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixup_makes_soft_labels_only_when_asked(data):
    x, y = data
    _, hard = stacked(make_dataset(x, y, 3, 8, training=True, augment=0.1, seed=2))
    assert set(np.unique(hard)) == {0.0, 1.0}
    images, soft = stacked(make_dataset(x, y, 3, 8, training=True, augment=0.1, mixup=0.2, seed=2))
    assert images.shape == (24, *SHAPE) and ((soft > 0) & (soft < 1)).any()
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)
    _, again = stacked(make_dataset(x, y, 3, 8, training=True, augment=0.1, mixup=0.2, seed=2))
    np.testing.assert_array_equal(again, soft)
    with pytest.raises(ConfigError, match="mixup: needs a Beta alpha"):
        make_dataset(x, y, 3, 8, training=True, mixup=-1)


def test_cosine_schedule_shortens_itself_to_the_time_budget(monkeypatch):
    """Planned for 10 epochs of 10 s with 60 s left after the second: the cosine re-targets its end
    (so the rate still decays to its tail), training stops there, and never later than planned."""
    from medtune.training import callbacks as cb_module

    clock = {"now": 0.0}
    monkeypatch.setattr(cb_module.time, "monotonic", lambda: clock["now"])

    class FakeBudget:
        def __init__(self, left):
            self.left = left

        def remaining(self):
            return self.left - clock["now"]

    def run(left, epoch_seconds):
        model = compile_model(build_model(TINY, SHAPE, 3), {})
        cos = training.EpochCosine(0, 10, 1.0, budget=FakeBudget(left))
        cos.set_model(model)
        rates, epoch = [], 0
        model.stop_training = False
        while not model.stop_training:
            cos.on_epoch_begin(epoch)
            rates.append(float(model.optimizer.learning_rate.numpy()))
            clock["now"] += epoch_seconds[min(epoch, len(epoch_seconds) - 1)]
            cos.on_epoch_end(epoch, {})
            epoch += 1
        clock["now"] = 0.0
        return cos, rates

    cos, rates = run(80.0, [20.0, 10.0])  # 80 s: a 20 s first epoch (tracing), then 10 s ones
    assert cos.end == 7 and len(rates) == 7 and cos.planned_end == 10
    assert rates[2] < training.EpochCosine(0, 10, 1.0).rate(2) and rates[-1] == pytest.approx(cos.rate(6))
    assert rates[-1] < 0.1  # the tail of the cosine was reached
    cos, rates = run(1000.0, [20.0, 10.0])  # time to spare: the plan as it was
    assert cos.end == 10 and rates == pytest.approx([training.EpochCosine(0, 10, 1.0).rate(e) for e in range(10)])
    training.release_model()


def test_predict_proba_keeps_no_array_it_was_given():
    """The app and the served model call it on every upload: memory must not grow with the calls."""
    import gc

    from medtune.models import build_model

    model = build_model({"num_blocks": 1, "filters": 4, "dense_units": 8, "dropout": 0.0}, (64, 64, 3), 2)
    rng = np.random.default_rng(0)

    def rss_mib() -> float:
        line = next(v for v in open("/proc/self/status") if v.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    training.predict_proba(model, rng.integers(0, 256, (400, 64, 64, 3), dtype=np.uint8))  # traced once
    gc.collect()
    before = rss_mib()
    for _ in range(12):  # 12 x 4.9 MB: a leak keeps about 59 MB
        training.predict_proba(model, rng.integers(0, 256, (400, 64, 64, 3), dtype=np.uint8))
    gc.collect()
    assert rss_mib() - before < 25
