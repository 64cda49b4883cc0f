"""Every figure renders to a non-trivial PNG, and no figure leaks into pyplot's registry."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from medtune import reports  # noqa: E402
from medtune.datasets.registry import DATASETS  # noqa: E402
from medtune.metrics import confusion, reliability_bins, roc_curves  # noqa: E402

LONG_NAMES = list(DATASETS["dermnet"].classes)  # 23 long class names with spaces

RNG = np.random.default_rng(0)
Y = RNG.integers(0, 23, 300)
PROBA = RNG.dirichlet(np.ones(23), 300)
PROBA[np.arange(300), Y] += 1.0  # mostly right
PROBA /= PROBA.sum(1, keepdims=True)


@pytest.fixture(autouse=True)
def no_leaked_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == []


def _check(fig, tmp_path, name):
    assert isinstance(fig, Figure)
    path = reports.save_figure(fig, tmp_path / "sub" / f"{name}.png")
    assert path.exists() and path.stat().st_size > 1024
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def test_learning_curves(tmp_path):
    history = {
        "loss": [1.2, 0.8, 0.6],
        "val_loss": [1.3, 1.0, 0.9],
        "accuracy": [0.5, 0.7, 0.8],
        "val_accuracy": [0.45, 0.6, 0.65],
        "macro_f1": [0.4, 0.6, 0.7],
        "val_macro_f1": [0.35, 0.5, 0.6],
        "learning_rate": [1e-3, 1e-3, 5e-4],
    }
    fig = reports.learning_curves(history)
    assert len([ax for ax in fig.axes if ax.axison]) == 4
    assert fig.axes[0].get_title() == "loss"
    _check(fig, tmp_path, "curves")


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix_with_23_long_names(tmp_path, normalize):
    cm = confusion(Y, PROBA.argmax(1), 23)
    fig = reports.confusion_matrix_figure(cm, LONG_NAMES, normalize=normalize, title="test")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == 23
    assert all(len(line) <= 18 for label in labels for line in label.split("\n"))
    assert all(label.count("\n") <= 1 for label in labels)
    w, h = fig.get_size_inches()
    assert h >= 0.35 * 23  # room for 23 rows
    _check(fig, tmp_path, f"cm_{normalize}")


def test_gradcam_grid(tmp_path):
    images = [RNG.integers(0, 256, (32, 32, 3)).astype(np.uint8) for _ in range(3)]
    images.append(RNG.integers(0, 256, (32, 32)).astype(np.uint8))  # grey
    heatmaps = [RNG.random((32, 32)).astype(np.float32) for _ in range(3)] + [np.zeros((8, 8))]
    titles = [f"true {LONG_NAMES[i]}\npred {LONG_NAMES[i + 1]} (0.93)" for i in range(4)]
    fig = reports.gradcam_grid(images, heatmaps, titles, ncols=3)
    shown = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(shown) == 4 and all(t.endswith("(0.93)") for t in shown)
    assert all(len(line) <= 36 for t in shown for line in t.split("\n"))
    _check(fig, tmp_path, "gradcam")


def test_class_counts_figure(tmp_path):
    counts = {
        split: {name: int(n) for name, n in zip(LONG_NAMES, RNG.integers(5, 200, 23))}
        for split in ("train", "val", "test")
    }
    del counts["test"][LONG_NAMES[0]]  # missing class in a split counts 0
    _check(reports.class_counts_figure(counts), tmp_path, "counts")


def test_sample_grid(tmp_path):
    grid = {
        LONG_NAMES[0]: [RNG.integers(0, 256, (24, 24, 3)).astype(np.uint8) for _ in range(4)],
        LONG_NAMES[1]: [RNG.random((24, 24, 1)) for _ in range(2)],  # 0..1 floats, grey
        "third": [RNG.integers(0, 256, (24, 24)).astype(np.uint8)],
    }
    _check(reports.sample_grid(grid), tmp_path, "samples")


def test_roc_figure(tmp_path):
    curves = roc_curves(Y, PROBA, 23)
    _check(reports.roc_figure(curves, LONG_NAMES), tmp_path, "roc")


def test_reliability_figure(tmp_path):
    _check(reports.reliability_figure(reliability_bins(Y, PROBA)), tmp_path, "reliability")


def test_empty_inputs_render_placeholders(tmp_path):
    for i, fig in enumerate([reports.learning_curves({}), reports.roc_figure({}, []), reports.sample_grid({})]):
        path = reports.save_figure(fig, tmp_path / f"empty{i}.png")
        assert path.exists()


def test_save_figure_closes_pyplot_figures(tmp_path):
    fig = plt.figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    reports.save_figure(fig, tmp_path / "p.png")
    assert plt.get_fignums() == []
