"""Benchmark (by hand, not in CI): EfficientNet-Lite0 vs Lite1 vs Lite2 as frozen ImageNet features.

A linear probe: each backbone, with its ImageNet weights and frozen, turns the same images into
pooled 1280-d features (once, no augmentation); a softmax layer is trained on the training
features for the same number of epochs (Adam, batch 32, same seeds) and scored on held-out images.
Files are read in place (never copied); byte-identical files are kept once, so no copy sits on
both sides. Accuracy comes with one standard error (binomial), and each bigger backbone's paired
difference to Lite0 on the same test images with its own standard error.

    python bench/lite_probe.py                                   # brain_mri, 200 + 200 per class, 160 and 240 px
    python bench/lite_probe.py --data ../shared/data/covid19_radiography --train-per-class 150 --test-per-class 150
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench._common import machine, shared_data, table  # noqa: E402

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
SUFFIXES = (".jpg", ".jpeg", ".png")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="class folders (default: shared brain_mri/Training)")
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 240])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3, help="probe trainings per backbone (mean reported)")
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def pick_files(folder: Path, n_train: int, n_test: int, seed: int):
    """Per class, distinct-content files shuffled: the first ``n_train`` train, the next ``n_test`` test."""
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    train, test, seen = [], [], set()
    for k, name in enumerate(classes):
        files = sorted(f for f in (folder / name).iterdir() if f.suffix.lower() in SUFFIXES)
        files = [files[i] for i in rng.permutation(len(files))]
        kept = []
        for f in files:
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                kept.append(f)
            if len(kept) == n_train + n_test:
                break
        train += [(f, k) for f in kept[:n_train]]
        test += [(f, k) for f in kept[n_train:]]
    return classes, train, test


def read(files, size: int):
    import numpy as np
    from PIL import Image

    x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f, _ in files])
    return x.astype("float32"), np.array([k for _, k in files])


def features(backbone: str, x, size: int):
    """Pooled features of the frozen ImageNet backbone (its preprocessing inside, inference mode)."""
    import keras

    from medtune.models.backbones import spec_of
    from medtune.models.layers import BackbonePreprocess
    from medtune.models.weights import load_backbone_weights, resolve_weights

    base = spec_of(backbone).build((size, size, 3))
    load_backbone_weights(base, backbone, resolve_weights("imagenet", [backbone])[backbone].path)
    inputs = keras.Input((size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(base(BackbonePreprocess(backbone)(inputs), training=False))
    model = keras.Model(inputs, pooled)
    return model.predict(x, batch_size=32, verbose=0)


def probe(f_train, y_train, f_test, k: int, epochs: int, seed: int):
    """Correct (1/0) per test image of a softmax layer trained on the frozen features."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input(f_train.shape[1:]), keras.layers.Dense(k, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(f_train, y_train, batch_size=32, epochs=epochs, verbose=0, shuffle=True)
    return model.predict(f_test, batch_size=256, verbose=0).argmax(1)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from medtune.training import configure_threads, release_model

    threads = configure_threads()
    folder = Path(args.data) if args.data else shared_data("brain_mri") / "Training"
    classes, train, test = pick_files(folder, args.train_per_class, args.test_per_class, args.seed)
    print(machine(), f"threads {threads}")
    print(f"{folder}: {len(classes)} classes, {len(train)} train / {len(test)} test images (distinct content)")
    rows = []
    for size in args.sizes:
        x_train, y_train = read(train, size)
        x_test, y_test = read(test, size)
        correct = {}
        for name in LITES:
            f_train = features(name, x_train, size)
            f_test = features(name, x_test, size)
            release_model()
            hits = [
                probe(f_train, y_train, f_test, len(classes), args.epochs, args.seed + s) == y_test
                for s in range(args.seeds)
            ]
            correct[name] = np.mean(hits, axis=0)  # per test image, mean over probe seeds
            acc = correct[name].mean()
            row = {
                "px": size,
                "backbone": name,
                "probe accuracy": round(float(acc), 4),
                "± 1 SE": round(float(np.sqrt(acc * (1 - acc) / len(y_test))), 4),
                "seeds min-max": f"{min(h.mean() for h in hits):.3f}-{max(h.mean() for h in hits):.3f}",
            }
            d = correct[name] - correct[LITES[0]]
            row["- Lite0 (paired)"] = (
                "" if name == LITES[0] else f"{d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(len(d)):.4f}"
            )
            rows.append(row)
            print(f"  {size} px {name}: {row}", flush=True)
    print(
        table(
            rows,
            f"linear probe on frozen ImageNet features, {args.epochs} epochs, mean of {args.seeds} seeds; "
            f"{len(train)} train / {len(test)} test images of {folder.name}",
        )
    )


if __name__ == "__main__":
    main()
