"""Where a backbone's initial weights come from: ``imagenet``, ``none``, a file or a folder.

``resolve_weights(option, backbones)`` runs before any trial or training starts and turns the
user's option into one checked local file per backbone (or none), so a missing network or a bad
file is a one-line error up front, never a hang or a traceback in the middle of a search:

* ``none``: random initialisation.
* ``imagenet``: for ``efficientnet_lite0/1/2``, the checkpoint its pip package ships (never a
  download); for the ``keras.applications`` backbones, Keras's own file, from its cache
  (``$KERAS_HOME/models`` or ``~/.keras/models``) or downloaded with ``keras.utils.get_file``
  when the download host answers within seconds.
* a ``.h5`` / ``.weights.h5`` file: the weights of one backbone, saved with or without its top;
  for the EfficientNet-Lite backbones also a legacy-format PyTorch ``.pth`` checkpoint of the same layout.
* a folder: the ImageNet file names of the backbone table looked up in it (a copy of
  ``~/.keras/models``).

Every resolved file is checked (HDF5 signature, not an HTML page, readable to the end; a ``.pth``
read whole by the safe reader) and hashed; ``medtune`` logs the source and sha256 on every run
that uses it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from medtune.errors import WeightsError
from medtune.models.backbones import BACKBONE_SPECS, spec_of

__all__ = ["WeightsError", "WeightsFile", "load_backbone_weights", "resolve_weights"]

log = logging.getLogger(__name__)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
TORCH_CHECKPOINT_BACKBONES = tuple(n for n, s in BACKBONE_SPECS.items() if s.imagenet_file.endswith(".pth"))
PROBE_TIMEOUT_S = 3.0
DOWNLOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class WeightsFile:
    backbone: str
    source: str  # "imagenet" or the path as given
    path: str
    sha256: str

    def tags(self) -> dict[str, str]:
        return {"weights_source": self.source, "weights_file": Path(self.path).name, "weights_sha256": self.sha256}


def resolve_weights(option: str | None, backbones) -> dict[str, WeightsFile]:
    """One checked file per backbone in ``backbones`` (``custom`` ignored); {} for ``none``.

    Raises:
        WeightsError: no network for ``imagenet`` and no cached file, a missing or bad file, a
            single file offered for several backbones.
    """
    option = (option or "none").strip()
    names = [b for b in dict.fromkeys(backbones) if b != "custom"]
    for name in names:
        spec_of(name)
    if not names or option.lower() == "none":
        return {}
    if option.lower() == "imagenet":
        return {name: _imagenet(name) for name in names}
    path = Path(option).expanduser()
    if path.is_dir():
        out = {}
        for name in names:
            candidate = path / spec_of(name).imagenet_file
            if not candidate.is_file():
                raise WeightsError(
                    f"weights={option}: no {spec_of(name).imagenet_file} for backbone {name} in that folder"
                )
            out[name] = _checked(name, str(candidate), str(candidate))
        return out
    if not path.exists():
        raise WeightsError(f"weights={option}: no such file (expected imagenet, none, a .h5 file or a folder)")
    if len(names) > 1:
        raise WeightsError(
            f"weights={option}: one file cannot initialise {', '.join(names)}; pass a folder with Keras's file "
            "name for each backbone, or search one backbone"
        )
    return {names[0]: _checked(names[0], option, str(path))}


def load_backbone_weights(base, backbone: str, path: str) -> None:
    """Load a checked weights file into the headless backbone model ``base``.

    Legacy Keras ``.h5`` files (what ``keras.applications`` downloads) load by layer name, so a
    file saved with its top fits too; every weighted layer of ``base`` must be in the file. Keras 3
    ``.weights.h5`` files load by structure.

    Raises:
        WeightsError: the file is for another architecture (names or shapes differ) or unreadable.
    """
    import h5py

    name = Path(path).name
    if _is_torch_checkpoint(path):
        _load_torch_checkpoint(base, backbone, path)
        return
    try:
        if name.endswith(".weights.h5"):
            base.load_weights(path)
            return
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
            in_file = {n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("layer_names", [])}
        wanted = [layer.name for layer in base.layers if layer.weights]
        missing = [n for n in wanted if n not in in_file]
        if missing:
            raise WeightsError(
                f"weights file {name} does not fit backbone {backbone}: {len(missing)} of its {len(wanted)} weighted "
                f"layers are not in the file (first: {missing[0]!r}); is it a file for another architecture?"
            )
        base.load_weights(path, by_name=True)
    except WeightsError:
        raise
    except (ValueError, KeyError, OSError, TypeError) as exc:
        raise WeightsError(f"weights file {name} does not fit backbone {backbone}: {_first_line(exc)}") from exc


# --------------------------------------------------------------------------- helpers


def _keras_models_dir() -> Path:
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def _imagenet(backbone: str) -> WeightsFile:
    import importlib

    spec = spec_of(backbone)
    if spec.imagenet_package:  # shipped with a pip package: no network, ever
        module, attr = spec.imagenet_package.split(":")
        try:
            path = getattr(importlib.import_module(module), attr)(backbone)
        except FileNotFoundError as exc:
            raise WeightsError(f"backbone {backbone}: ImageNet weights: {exc}; or use -P weights=none") from None
        checked = _checked(backbone, "imagenet", path)
        if spec.imagenet_sha256 and checked.sha256 != spec.imagenet_sha256:
            raise WeightsError(
                f"backbone {backbone}: ImageNet weights file {path} has sha256 {checked.sha256[:12]}..., "
                f"expected {spec.imagenet_sha256[:12]}... (a damaged install? reinstall its package)"
            )
        return checked
    cached = _keras_models_dir() / spec.imagenet_file
    if cached.is_file():
        return _checked(backbone, "imagenet", str(cached))
    host = urlparse(spec.imagenet_url).hostname
    hint = (
        f"download {spec.imagenet_url} on a machine with network and pass -P weights=<that file> "
        f"(or put it in {cached.parent}), or use -P weights=none"
    )
    from medtune.network import reachable, route

    if not reachable(host, 443, PROBE_TIMEOUT_S):  # through HTTPS_PROXY when one applies, as the download
        raise WeightsError(
            f"backbone {backbone}: ImageNet weights cannot be downloaded here "
            f"({route(host)} does not answer within {PROBE_TIMEOUT_S:.0f} s); {hint}"
        ) from None
    import keras

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        log.info("Downloading ImageNet weights for %s from %s", backbone, spec.imagenet_url)
        path = keras.utils.get_file(spec.imagenet_file, spec.imagenet_url, cache_subdir="models")
    except Exception as exc:  # noqa: BLE001 - any download failure is the same one-line story
        raise WeightsError(f"backbone {backbone}: ImageNet weights download failed ({exc}); {hint}") from None
    finally:
        socket.setdefaulttimeout(previous)
    return _checked(backbone, "imagenet", path)


def _checked(backbone: str, source: str, path: str) -> WeightsFile:
    """Signature, HTML and readability checks; the sha256 of the file."""
    name = Path(path).name
    if _is_torch_checkpoint(path):
        if backbone not in TORCH_CHECKPOINT_BACKBONES:
            raise WeightsError(
                f"weights file {path}: a PyTorch checkpoint can initialise only "
                f"{', '.join(TORCH_CHECKPOINT_BACKBONES)}, not backbone {backbone}"
            )
        _read_torch_checkpoint(path)  # read whole: truncated, zip-format or unsafe files fail here
        return WeightsFile(backbone, source, str(path), _sha256(path))
    if not (name.endswith(".h5") or name.endswith(".hdf5")):
        raise WeightsError(
            f"weights file {path}: expected a .h5 or .weights.h5 file for backbone {backbone}"
            + (" (or a legacy-format .pth checkpoint)" if backbone in TORCH_CHECKPOINT_BACKBONES else "")
        )
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError as exc:
        raise WeightsError(f"weights file {path}: cannot be read ({exc.strerror or exc})") from None
    if not head.startswith(HDF5_SIGNATURE):
        text = head.lstrip().lower()
        if text.startswith((b"<!doctype html", b"<html")) or b"<html" in text:
            raise WeightsError(f"weights file {path} is an HTML page, not HDF5 weights (a failed download?)")
        raise WeightsError(f"weights file {path} is not an HDF5 weights file (no HDF5 signature)")
    _check_readable(path)
    return WeightsFile(backbone, source, str(path), _sha256(path))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_torch_checkpoint(path: str) -> bool:
    return Path(path).suffix.lower() in (".pth", ".pt")


def _read_torch_checkpoint(path: str) -> dict:
    from medtune.models.torch_legacy import CheckpointError, read_state_dict

    try:
        return read_state_dict(path)
    except CheckpointError as exc:
        raise WeightsError(f"weights file {path}: {exc}") from None


def _load_torch_checkpoint(base, backbone: str, path: str) -> None:
    from medtune.models.efficientnet_lite import load_checkpoint

    try:
        load_checkpoint(base, _read_torch_checkpoint(path))
    except ValueError as exc:
        raise WeightsError(f"weights file {Path(path).name} does not fit backbone {backbone}: {exc}") from None


def _check_readable(path: str) -> None:
    """Open the file and read every dataset: a truncated file fails here, not mid-build."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda _, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, KeyError, RuntimeError ...
        raise WeightsError(f"weights file {path} is truncated or damaged ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
