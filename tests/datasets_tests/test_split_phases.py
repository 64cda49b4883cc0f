"""Each phase of make_split on a handful of fabricated records (no images)."""

from __future__ import annotations

import numpy as np
import pytest

from medtune.datasets.records import ScanResult, SkippedFile
from medtune.datasets.split_phases import (
    Unit,
    assign_splits,
    deal,
    deal_class,
    find_exact_duplicates,
    find_label_conflicts,
    find_near_label_mismatches,
    find_test_leaks,
    group_id,
    group_of_records,
    make_units,
)
from medtune.datasets.splitting import (
    MANIFEST_COLUMNS,
    Removals,
    account_for_files,
    build_manifest,
    build_report,
    check_parameters,
    find_removals,
)
from medtune.errors import DataError, InternalError
from tests.helpers import image_record as rec
from tests.helpers import near_phash

SHA_A = "a" * 64
SHA_B = "b" * 64


def test_group_ids_follow_the_group_order_and_index_their_members():
    assert [group_id(k) for k in (0, 7, 12345)] == ["g00000", "g00007", "g12345"]
    assert group_of_records([[0, 2], [3, 4]]) == {0: 0, 2: 0, 3: 1, 4: 1}


def test_label_conflicts_are_every_copy_of_one_file_under_two_labels():
    records = [rec("/d/a/1.png", "a", sha=SHA_A), rec("/d/a/2.png", "a"), rec("/d/b/1.png", "b", sha=SHA_A)]
    conflicts = find_label_conflicts(records, [[0, 2]])
    assert conflicts == {
        0: {"path": "/d/a/1.png", "label": "a", "group": "g00000"},
        2: {"path": "/d/b/1.png", "label": "b", "group": "g00000"},
    }


def test_near_duplicates_with_two_labels_are_not_conflicts_but_mismatches():
    a = rec("/d/a/1.png", "a")
    records = [a, rec("/d/b/1.png", "b", phash=near_phash(a.phash))]
    assert find_label_conflicts(records, [[0, 1]]) == {}
    assert find_near_label_mismatches(records, [[0, 1]], excluded=set()) == [
        {"group": "g00000", "labels": ["a", "b"], "paths": ["/d/a/1.png", "/d/b/1.png"]}
    ]


def test_mismatches_ignore_records_already_left_out():
    records = [rec("/d/a/1.png", "a", sha=SHA_A), rec("/d/a/2.png", "a"), rec("/d/b/1.png", "b", sha=SHA_A)]
    assert find_near_label_mismatches(records, [[0, 1, 2]], excluded={0, 2}) == []


def test_test_leaks_name_the_exact_copy_in_train_else_the_first_training_image():
    records = [
        rec("/d/Testing/a/1.png", "a", "test", sha=SHA_A),
        rec("/d/Testing/a/2.png", "a", "test"),
        rec("/d/Training/a/1.png", "a", sha=SHA_B),
        rec("/d/Training/a/2.png", "a", sha=SHA_A),
    ]
    leaks = find_test_leaks(records, [[0, 1, 2, 3]], excluded=set())
    assert {i: (e["duplicate_of"], e["kind"]) for i, e in leaks.items()} == {
        0: ("/d/Training/a/2.png", "exact"),
        1: ("/d/Training/a/1.png", "near"),
    }


def test_a_group_of_test_images_only_is_no_leak():
    records = [rec("/d/Testing/a/1.png", "a", "test", sha=SHA_A), rec("/d/Testing/a/2.png", "a", "test", sha=SHA_A)]
    assert find_test_leaks(records, [[0, 1]], excluded=set()) == {}


def test_a_test_image_whose_only_training_twin_was_left_out_stays():
    records = [rec("/d/Testing/a/1.png", "a", "test"), rec("/d/Training/a/1.png", "a")]
    assert find_test_leaks(records, [[0, 1]], excluded={1}) == {}


def test_exact_duplicates_keep_the_training_copy_then_the_first_path():
    records = [
        rec("/d/Testing/a/0.png", "a", "test", sha=SHA_A),
        rec("/d/Training/a/9.png", "a", sha=SHA_A),
        rec("/d/Training/a/z.png", "a", sha=SHA_B),
        rec("/d/Training/a/y.png", "a", sha=SHA_B),
    ]
    duplicates = find_exact_duplicates(records, [[0, 1], [2, 3]], excluded=set())
    assert {records[i].path: e["duplicate_of"] for i, e in duplicates.items()} == {
        "/d/Testing/a/0.png": "/d/Training/a/9.png",
        "/d/Training/a/z.png": "/d/Training/a/y.png",
    }
    assert duplicates[0]["source"] == "test" and duplicates[0]["group"] == "g00000"


def test_exact_duplicates_skip_excluded_copies():
    records = [rec("/d/a/1.png", "a", sha=SHA_A), rec("/d/a/2.png", "a", sha=SHA_A)]
    assert find_exact_duplicates(records, [[0, 1]], excluded={1}) == {}


def test_find_removals_runs_the_phases_in_order():
    records = [
        rec("/d/Testing/a/1.png", "a", "test", sha=SHA_A),  # leak of /d/Training/a/1.png
        rec("/d/Training/a/1.png", "a", sha=SHA_A),
        rec("/d/Training/a/2.png", "a", sha=SHA_B),  # conflict with b/1
        rec("/d/Training/b/1.png", "b", sha=SHA_B),
    ]
    removals = find_removals(records, [[0, 1], [2, 3]], official=True)
    assert set(removals.conflicted) == {2, 3}
    assert set(removals.test_dropped) == {0}
    assert removals.removed == {}  # the test copy left as a leak, not as a duplicate
    assert removals.excluded == {0, 2, 3}
    assert find_removals(records, [[0, 1], [2, 3]], official=False).removed.keys() == {0}


def test_units_keep_each_group_once_and_ungrouped_images_alone():
    records = [rec("/d/a/1.png", "a"), rec("/d/a/2.png", "a"), rec("/d/a/3.png", "a"), rec("/d/a/4.png", "a")]
    units = make_units(records, [[1, 2, 3]], excluded={1})
    assert units == [Unit("/d/a/1.png", "a", [0]), Unit("/d/a/3.png", "a", [2, 3])]


def test_deal_fills_splits_in_order_and_gives_each_at_least_one_unit():
    units = [Unit(f"u{i}", "a", [i]) for i in range(10)]
    dealt = deal(units, {"test": 2, "val": 3}, ("test", "val", "train"), np.random.default_rng(0))
    assert [len(dealt[s]) for s in ("test", "val", "train")] == [2, 3, 5]
    tight = deal(units[:3], {"test": 5, "val": 5}, ("test", "val", "train"), np.random.default_rng(0))
    assert [len(tight[s]) for s in ("test", "val", "train")] == [1, 1, 1]


def test_deal_class_with_an_official_test_set_deals_only_the_training_pool():
    records = [rec(f"/d/Training/a/{i}.png", "a") for i in range(4)] + [rec("/d/Testing/a/0.png", "a", "test")]
    units = [Unit(r.path, "a", [i]) for i, r in enumerate(records)]
    dealt = deal_class(records, units, "a", official=True, val_fraction=0.25, test_fraction=0.0, seed=1)
    assert [u.key for u in dealt["test"]] == ["/d/Testing/a/0.png"]
    assert len(dealt["val"]) == 1 and len(dealt["train"]) == 3


@pytest.mark.parametrize(
    ("official", "sources", "message"),
    [
        (False, ["train", "train"], r"class 'a' has 2 group\(s\)"),
        (True, ["train", "train"], r"2 training group\(s\) and 0 official test group\(s\)"),
        (True, ["train", "test"], r"1 training group\(s\) and 1 official test group\(s\)"),
    ],
)
def test_deal_class_with_too_few_units_is_a_data_error(official, sources, message):
    records = [rec(f"/d/{s}/a/{i}.png", "a", s) for i, s in enumerate(sources)]
    units = [Unit(r.path, "a", [i]) for i, r in enumerate(records)]
    with pytest.raises(DataError, match=message):
        deal_class(records, units, "a", official=official, val_fraction=0.2, test_fraction=0.2, seed=0)


def test_assign_splits_gives_every_member_of_a_unit_the_same_split():
    records = [rec(f"/d/{c}/{i}.png", c) for c in ("a", "b") for i in range(5)]
    units = [Unit(records[0].path, "a", [0, 1])] + [Unit(r.path, r.label, [i]) for i, r in enumerate(records) if i > 1]
    split_of = assign_splits(records, units, ["a", "b"], official=False, val_fraction=0.2, test_fraction=0.2, seed=3)
    assert sorted(split_of) == list(range(10))
    assert split_of[0] == split_of[1]
    for label in ("a", "b"):
        assert {split_of[i] for i, r in enumerate(records) if r.label == label} == {"train", "val", "test"}


def test_manifest_rows_are_sorted_and_carry_their_group():
    records = [rec("/d/a/2.png", "a"), rec("/d/a/1.png", "a"), rec("/d/b/1.png", "b")]
    manifest = build_manifest(records, [[0, 1]], {0: "val", 1: "val", 2: "test"})
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert manifest[["path", "split", "group"]].values.tolist() == [
        ["/d/b/1.png", "test", ""],
        ["/d/a/1.png", "val", "g00000"],
        ["/d/a/2.png", "val", "g00000"],
    ]


def _removals(removed=0, conflicted=0, test_dropped=0) -> Removals:
    return Removals(
        conflicted=dict.fromkeys(range(conflicted), {}),
        near_mismatch=[],
        test_dropped=dict.fromkeys(range(test_dropped), {}),
        removed=dict.fromkeys(range(removed), {}),
    )


def test_accounting_adds_up_every_file():
    accounted = account_for_files(10, 2, 5, _removals(removed=1, conflicted=2, test_dropped=2))
    assert accounted == {
        "files_seen": 12,
        "kept": 5,
        "skipped": 2,
        "removed_duplicates": 1,
        "conflicted": 2,
        "test_dropped_duplicates_of_train": 2,
        "ok": True,
    }


def test_lost_files_raise_an_internal_error_even_under_python_O():
    # A real check, not an `assert` that `python -O` strips.
    with pytest.raises(InternalError, match="split bookkeeping lost files"):
        account_for_files(10, 0, 8, _removals(removed=1))


def test_check_parameters_returns_floats_and_rejects_an_empty_scan():
    scan = ScanResult(root="/d", classes=["a"], records=[rec("/d/a/1.png", "a")])
    assert check_parameters(scan, 1 / 4, 1 / 4, 7) == (0.25, 0.25)
    with pytest.raises(DataError, match="seed must be an integer"):
        check_parameters(scan, 0.1, 0.1, 1.5)
    with pytest.raises(DataError, match="no usable images found in /d"):
        check_parameters(ScanResult(root="/d", classes=["a"], records=[]), 0.1, 0.1, 1)


def test_an_official_test_folder_allows_a_zero_test_fraction():
    scan = ScanResult(root="/d", classes=["a"], records=[rec("/d/a/1.png", "a")], has_official_test=True)
    assert check_parameters(scan, 0.2, 0, 1) == (0.2, 0.0)
    with pytest.raises(DataError, match=r"test_fraction must be in \(0, 1\)"):
        check_parameters(ScanResult(root="/d", classes=["a"], records=scan.records), 0.2, 0, 1)


def test_report_lists_what_left_and_why_with_the_parameters():
    records = [rec("/d/a/1.png", "a", sha=SHA_A), rec("/d/a/2.png", "a", sha=SHA_A), rec("/d/b/1.png", "b")]
    scan = ScanResult(
        root="/d",
        classes=["a", "b"],
        records=records,
        skipped=[SkippedFile("/d/a/x.png", "truncated")],
        ignored={"hidden": 3},
    )
    removals = find_removals(records, [[0, 1]], official=False)
    manifest = build_manifest(records, [[0, 1]], {0: "train", 2: "val"})
    accounted = account_for_files(3, 1, len(manifest), removals)
    report = build_report(
        scan,
        records,
        [[0, 1]],
        manifest,
        removals,
        accounted,
        classes=["a", "b"],
        seed=5,
        val_fraction=0.2,
        test_fraction=0.1,
        phash_distance=0,
    )
    assert report["counts"]["train"] == {"a": 1, "b": 0} and report["totals"] == {"train": 1, "val": 1, "test": 0}
    assert report["removed_duplicates"] == [
        {"path": "/d/a/2.png", "label": "a", "source": "train", "duplicate_of": "/d/a/1.png", "group": "g00000"}
    ]
    assert report["duplicate_groups"] == {
        "count": 1,
        "largest": 2,
        "groups": [{"id": "g00000", "paths": ["/d/a/1.png", "/d/a/2.png"]}],
    }
    assert report["skipped"] == [{"path": "/d/a/x.png", "reason": "truncated"}] and report["ignored"] == {"hidden": 3}
    assert (report["seed"], report["test_source"], report["notes"]) == (5, "carved", [])
    assert report["accounted"]["ok"]


def test_report_warns_about_a_huge_near_duplicate_group():
    records = [rec(f"/d/a/{i:02d}.png", "a") for i in range(60)]
    groups = [list(range(60))]
    removals = Removals({}, [], {}, {})
    report = build_report(
        ScanResult(root="/d", classes=["a"], records=records),
        records,
        groups,
        build_manifest(records, groups, {}),
        removals,
        {},
        classes=["a"],
        seed=0,
        val_fraction=0.2,
        test_fraction=0.2,
        phash_distance=8,
    )
    assert any("largest duplicate group holds 60 images" in note for note in report["notes"])
