"""k-fold final training's folds: stratified, grouped (duplicates and patients), in the cache's row order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtune.errors import DataError
from medtune.training.folds import assign_folds, fold_data, pool_groups


def test_folds_are_stratified_grouped_and_seeded():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [100, 60, 40])
    groups = np.arange(len(y))
    groups[:30] = np.repeat(np.arange(10), 3)  # ten groups of three copies in class 0
    fold = assign_folds(y, groups, 5, seed=1)
    assert sorted(np.unique(fold)) == [0, 1, 2, 3, 4]
    for g in range(10):
        assert len(set(fold[groups == g])) == 1  # a group never straddles two folds
    for c, n in enumerate([100, 60, 40]):
        per_fold = np.bincount(fold[y == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 3 and per_fold.sum() == n  # each class spread evenly
    assert (assign_folds(y, groups, 5, seed=1) == fold).all()
    assert not (assign_folds(y, rng.permutation(groups), 5, seed=2) == fold).all()


def test_each_member_trains_on_the_other_folds_and_stops_on_its_own():
    x, y = np.arange(40)[:, None], np.repeat([0, 1], 20)
    fold = assign_folds(y, np.arange(40), 4, seed=0)
    held_out = [fold_data(x, y, fold, i).x["val"][:, 0] for i in range(4)]
    assert sorted(np.concatenate(held_out)) == list(range(40))  # every image held out exactly once
    data = fold_data(x, y, fold, 2)
    assert set(data.x["train"][:, 0]).isdisjoint(data.x["val"][:, 0]) and len(data.y["train"]) == 30


def test_too_few_images_or_groups_for_the_folds_is_one_line():
    with pytest.raises(DataError, match="folds=5: 6 images in 3 groups cannot fill 5 folds"):
        assign_folds(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 2, 2]), 5, seed=0)


def test_pooled_groups_join_duplicates_and_patients_in_the_caches_row_order():
    manifest = pd.DataFrame(
        [
            # path, label, split, sha256, group, patient
            ("b/2.png", "b", "val", "22", "", "p1"),
            ("a/1.png", "a", "train", "11", "g0", ""),
            ("a/3.png", "a", "train", "33", "g0", "p1"),  # same duplicate group as a/1, same patient as b/2
            ("a/4.png", "a", "train", "44", "", ""),
            ("b/5.png", "b", "train", "55", "", "p2"),
            ("b/6.png", "b", "test", "66", "", "p3"),  # the test split is not pooled
        ],
        columns=["path", "label", "split", "sha256", "group", "patient"],
    )
    groups = pool_groups(manifest)
    # cache order: train rows by (label, sha256, path): a/1, a/3, a/4, b/5; then val: b/2
    assert len(groups) == 5
    assert groups[0] == groups[1] == groups[4]  # a/1 ~ a/3 (duplicates) ~ b/2 (a/3's patient)
    assert len({groups[0], groups[2], groups[3]}) == 3


def test_final_fit_with_folds_trains_one_member_per_fold_and_predicts_each_image_out_of_fold(small_cache):
    from medtune.training.final import final_fit

    reported = []
    fitted = final_fit(
        {"num_blocks": 1, "filters": 4, "dense_units": 8, "learning_rate": 1e-3, "batch_size": 8},
        small_cache,
        3,
        class_weight=None,
        weights={},
        epochs=2,
        patience=None,
        ensemble=1,  # ignored: one member per fold
        seed=0,
        mixed=False,
        report=lambda prefix, epoch, logs: reported.append(prefix),
        folds=3,
        groups=np.arange(36),
    )
    assert len(fitted.members) == 3 and sorted(set(reported)) == ["member0_", "member1_", "member2_"]
    oof = fitted.out_of_fold
    assert (oof["y"] == np.concatenate([small_cache.y["train"], small_cache.y["val"]])).all()
    for name in ("plain", "flip"):
        assert oof[name].shape == (36, 3) and np.allclose(oof[name].sum(1), 1, atol=1e-5)  # every image predicted
    # each image's out-of-fold probabilities are those of the one member that did not train on it
    fold = assign_folds(oof["y"], np.arange(36), 3, seed=0)
    from medtune.training import predict_proba

    x = np.concatenate([small_cache.x["train"], small_cache.x["val"]])
    for i, member in enumerate(fitted.members):
        assert np.allclose(predict_proba(member, x[fold == i]), oof["plain"][fold == i], atol=1e-5)


@pytest.fixture
def small_cache():
    from medtune.training.folds import FoldData

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (36, 16, 16, 3), dtype=np.uint8)
    y = np.arange(36) % 3
    return FoldData(x={"train": x[:27], "val": x[27:]}, y={"train": y[:27], "val": y[27:]})
