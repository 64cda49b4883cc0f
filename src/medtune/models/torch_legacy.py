"""Read a PyTorch checkpoint in the legacy (non-zip) format with ``pickle`` and numpy only.

The layout (what ``torch.save(..., _use_new_zipfile_serialization=False)`` writes)::

    pickle(MAGIC_NUMBER) pickle(PROTOCOL_VERSION) pickle(sys_info)
    pickle(state dict)   tensors name their storage through a persistent id
                         ("storage", <Type>Storage, key, location, numel[, view])
    pickle([storage keys in file order])
    per key: int64 little-endian element count, then the raw little-endian elements

Pickle runs code, so the unpickler here resolves exactly three kinds of global: the tensor
rebuild function, the storage types and ``collections.OrderedDict``; any other global is a
:class:`CheckpointError` before anything is built. No torch is needed.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CheckpointError", "read_state_dict", "write_state_dict"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
ZIP_SIGNATURE = b"PK\x03\x04"

STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # widened to float32 after reading
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class CheckpointError(ValueError):
    """A file that is not a readable legacy PyTorch checkpoint (one line, names the file)."""


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass(frozen=True)
class _TensorRef:
    """A tensor before its storage is read: which storage, where, which shape and strides."""

    key: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):  # noqa: ARG001 - torch's signature
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, tuple[str, int]]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refuses to load {module}.{name}: only tensors and OrderedDict are allowed"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"unexpected persistent id {str(pid)[:60]!r}")
        _, kind, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError("storage views are not supported")
        self._storages[str(key)] = (kind.name, int(numel))
        return str(key)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as numpy arrays, by name, in file order.

    Raises:
        CheckpointError: a zip-format or foreign file, a pickle naming any other class, a
            truncated file, or tensors that reach outside their storage; the message is one line
            and names the file.
    """
    name = Path(path).name
    try:
        with open(path, "rb") as f:
            return _read(f)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {name}: {exc}") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {name}: cannot be read ({exc.strerror or exc})") from None
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise CheckpointError(
            f"checkpoint {name}: not a legacy PyTorch checkpoint or truncated "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def _read(f) -> dict[str, np.ndarray]:
    if f.read(4) == ZIP_SIGNATURE:
        raise CheckpointError(
            "zip-format checkpoint (torch >= 1.6 default); re-save it with "
            "_use_new_zipfile_serialization=False or pass a .weights.h5 file"
        )
    f.seek(0)
    storages: dict[str, tuple[str, int]] = {}
    header = [_Unpickler(f, storages).load() for _ in range(3)]
    if header[0] != MAGIC_NUMBER:
        raise CheckpointError("not a PyTorch checkpoint (wrong magic number)")
    if header[1] != PROTOCOL_VERSION:
        raise CheckpointError(f"unsupported protocol version {header[1]!r}")
    if not (isinstance(header[2], dict) and header[2].get("little_endian", True)):
        raise CheckpointError("big-endian checkpoints are not supported")
    state = _Unpickler(f, storages).load()
    if not isinstance(state, dict) or not all(isinstance(v, _TensorRef) for v in state.values()):
        raise CheckpointError("does not hold a state dict of tensors")
    keys = _Unpickler(f, storages).load()
    if not isinstance(keys, list):
        raise CheckpointError("storage key list is missing")
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        kind, numel = storages[str(key)]
        dtype = STORAGE_DTYPES[kind]
        (count,) = struct.unpack("<q", _exactly(f, 8))
        if count != numel:
            raise CheckpointError(f"storage {key}: {count} elements on disk, {numel} announced")
        data = np.frombuffer(_exactly(f, count * dtype.itemsize), dtype=dtype)
        if kind == "BFloat16Storage":
            data = (data.astype(np.uint32) << 16).view(np.float32)
        arrays[str(key)] = data
    if f.read(1):
        raise CheckpointError("unexpected data after the last storage")
    return {name: _view(name, ref, arrays) for name, ref in state.items()}


def _exactly(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CheckpointError(f"truncated: {len(data)} of {n} bytes at offset {f.tell()}")
    return data


def _view(name: str, ref: _TensorRef, arrays: dict[str, np.ndarray]) -> np.ndarray:
    if ref.key not in arrays:
        raise CheckpointError(f"tensor {name}: storage {ref.key} is not in the file")
    storage = arrays[ref.key]
    if len(ref.shape) != len(ref.stride) or any(s < 0 for s in (*ref.shape, *ref.stride)):
        raise CheckpointError(f"tensor {name}: bad shape {ref.shape} or stride {ref.stride}")
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride) if n > 0)
    if min(ref.shape, default=1) > 0 and (ref.offset < 0 or last >= storage.size):
        raise CheckpointError(f"tensor {name}: reaches outside its storage")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset :] if storage.size else storage,
        shape=ref.shape,
        strides=tuple(s * itemsize for s in ref.stride),
        writeable=False,
    )
    return np.array(view, order="C")  # a contiguous copy, independent of the file buffer


# --------------------------------------------------------------------------- writer (tests, tools)


class _Storage:
    def __init__(self, key: str, kind: str, data: np.ndarray):
        self.key, self.kind, self.data = key, kind, data


class _Rebuild:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""

    def __init__(self, storage: _Storage, offset: int, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)


class _Global:
    """Pickles as the global ``module.name`` (torch's names, which need no torch to write)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __reduce__(self):
        return self.name  # a string: pickle calls save_global, overridden below

    def __call__(self, *args):  # pickle's save_reduce wants a callable
        raise TypeError("a stand-in for pickling only")


class _Pickler(pickle._Pickler):  # the Python implementation, whose save_global can be overridden
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", obj.kind), obj.key, "cpu", int(obj.data.size), None)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, _Rebuild):
            return (
                _Global("torch._utils", "_rebuild_tensor_v2"),
                (obj.storage, obj.offset, obj.shape, obj.stride, False, collections.OrderedDict()),
            )
        return NotImplemented

    def save_global(self, obj, name=None):
        if not isinstance(obj, _Global):
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)


def write_state_dict(
    path: str | Path,
    tensors: dict[str, tuple[np.ndarray, int, tuple, tuple]] | dict[str, np.ndarray],
    protocol: int = 2,
) -> None:
    """Write arrays as a legacy-format checkpoint, as ``torch.save`` did before zip files.

    ``tensors`` maps names to arrays, or to ``(storage_array, offset, shape, stride)`` for a
    tensor that views a storage (non-contiguous strides, offsets, storages shared by names).
    Used by the tests, which have no torch.
    """
    kinds = {dtype: kind for kind, dtype in STORAGE_DTYPES.items() if kind != "BFloat16Storage"}
    storages: dict[int, _Storage] = {}
    keep = []  # the base arrays, so their ids stay unique while writing
    state = collections.OrderedDict()
    for name, value in tensors.items():
        if isinstance(value, tuple):
            base, offset, shape, stride = value
        else:
            base = np.array(value, order="C")  # (ascontiguousarray would make a scalar 1-d)
            offset, shape = 0, base.shape
            stride = tuple(s // base.itemsize for s in base.strides)
        keep.append(base)
        if id(base) not in storages:
            flat = np.ascontiguousarray(base).reshape(-1)
            storages[id(base)] = _Storage(str(len(storages)), kinds[flat.dtype.newbyteorder("=")], flat)
        state[name] = _Rebuild(storages[id(base)], offset, shape, stride)
    buf = io.BytesIO()
    for header in (
        MAGIC_NUMBER,
        PROTOCOL_VERSION,
        {"protocol_version": PROTOCOL_VERSION, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
    ):
        pickle.dump(header, buf, protocol=protocol)
    _Pickler(buf, protocol=protocol).dump(state)
    pickle.dump([s.key for s in storages.values()], buf, protocol=protocol)
    for s in storages.values():
        buf.write(struct.pack("<q", s.data.size))
        buf.write(s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())
    Path(path).write_bytes(buf.getvalue())
