"""Reading what a user uploads to the demo, within limits checked before the bytes they guard are read.

Gradio streams each upload to a file on disk (at most ``max_file_size``); this module turns those
files into ``(name, bytes)`` pairs. A zip archive is the one way a small upload can become a large
batch, so its entries are counted from the archive's end record, its members' declared sizes are
summed before any is read, and each member is decompressed in chunks against the bytes left: the
first file or byte past a limit refuses the whole batch with one line.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NoReturn

from medtune.errors import MedtuneError
from medtune.serving import MAX_IMAGE_BYTES

MAX_BATCH_IMAGES = 200
MAX_BATCH_BYTES = 512 * 2**20  # all images of one batch together, as read (zip members uncompressed)
MAX_ZIP_ENTRIES = 10 * MAX_BATCH_IMAGES  # folders and macOS resource forks count here, not as images
_CHUNK = 2**20
MIB = 2**20


class UploadError(MedtuneError):
    """An upload the demo cannot use; the message names the file."""


class _Batch:
    """The images read so far and what is left of the batch's limits."""

    def __init__(self, max_images: int, max_bytes: int):
        self.files: list[tuple[str, bytes]] = []
        self.max_images, self.max_bytes, self.bytes_left = max_images, max_bytes, max_bytes

    def reserve(self, name: str, count: int, declared: int) -> None:
        """Refuse ``count`` more images of ``declared`` bytes in all before any of them is read."""
        if len(self.files) + count > self.max_images:
            raise UploadError(f"{name}: more than {self.max_images} images in one batch: split it into smaller ones")
        if declared > self.bytes_left:
            self._refuse_bytes(name)

    def add(self, name: str, declared: int, stream: BinaryIO) -> None:
        """Read one image in chunks, stopping at the first byte past its own or the batch's limit."""
        if declared > MAX_IMAGE_BYTES:
            self._refuse_image(name)
        self.reserve(name, 1, declared)
        limit = min(MAX_IMAGE_BYTES, self.bytes_left)
        data = bytearray()
        while len(data) <= limit and (chunk := stream.read(min(_CHUNK, limit + 1 - len(data)))):
            data += chunk
        if len(data) > limit:
            if limit == MAX_IMAGE_BYTES:
                self._refuse_image(name)
            self._refuse_bytes(name)
        self.bytes_left -= len(data)
        self.files.append((name, bytes(data)))

    def _refuse_bytes(self, name: str) -> NoReturn:
        raise UploadError(f"{name}: more than {self.max_bytes // MIB} MiB of images in one batch: split it")

    @staticmethod
    def _refuse_image(name: str) -> NoReturn:
        raise UploadError(f"{name}: larger than {MAX_IMAGE_BYTES // MIB} MiB, the most one image may be")


def _zip_entries(path: Path) -> int:
    """Entries the archive's end record declares, read before Python's zipfile parses them all."""
    with path.open("rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - 22 - 2**16))  # the end record: 22 bytes and a comment of up to 64 KiB
        tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    return int.from_bytes(tail[at + 10 : at + 12], "little") if at >= 0 else 0  # 0xFFFF: a ZIP64 count


def _read_zip(path: Path, batch: _Batch) -> None:
    if _zip_entries(path) > MAX_ZIP_ENTRIES:
        raise UploadError(f"{path.name}: more than {MAX_ZIP_ENTRIES} entries in the zip archive")
    with zipfile.ZipFile(path) as archive:
        members = [
            info
            for info in archive.infolist()
            if not info.is_dir()
            and not any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(info.filename).parts)
        ]
        batch.reserve(path.name, len(members), sum(info.file_size for info in members))
        for info in members:
            with archive.open(info) as stream:
                batch.add(f"{path.name}/{info.filename}", info.file_size, stream)


def read_batch(
    paths: list[Path], max_images: int = MAX_BATCH_IMAGES, max_bytes: int = MAX_BATCH_BYTES
) -> list[tuple[str, bytes]]:
    """The uploaded files, every zip archive replaced by the files inside it (folders flattened).

    Hidden entries and macOS resource forks are left out.

    Raises:
        UploadError: a damaged zip, more than ``max_images`` files, an image over
            :data:`medtune.serving.MAX_IMAGE_BYTES` or more than ``max_bytes`` in all (declared or read).
    """
    batch = _Batch(max_images, max_bytes)
    for path in paths:
        if not zipfile.is_zipfile(path):
            with path.open("rb") as fh:
                batch.add(path.name, path.stat().st_size, fh)
            continue
        try:
            _read_zip(path, batch)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as exc:
            # NotImplementedError: an unknown compression; a member that lies about its size fails its CRC
            raise UploadError(f"{path.name}: damaged or unsupported zip archive ({exc})") from exc
    return batch.files
