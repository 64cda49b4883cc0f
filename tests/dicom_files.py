"""DICOM files written by the tests with pydicom's writer, from pixel arrays (the synthetic phantoms)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

# Identifying values a test can search for in whatever a run logs.
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-20240917-77", "PatientBirthDate": "19510203"}


def dicom_bytes(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    center: float | None = None,
    width: float | None = None,
    syntax=ExplicitVRLittleEndian,
    preamble: bool = True,
    patient_id: str = PATIENT["PatientID"],
) -> bytes:
    """One DICOM file: ``pixels`` (rows, cols), (rows, cols, 3) for RGB or (frames, rows, cols) with
    ``photometric`` ``MONOCHROME*``; stored as their dtype (uint8, uint16 or int16)."""
    pixels = np.ascontiguousarray(pixels)
    colour = photometric == "RGB"
    frames = pixels.shape[0] if pixels.ndim == 3 and not colour else 1
    ds = Dataset()
    ds.update({**PATIENT, "PatientID": patient_id})
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    if syntax.is_compressed:  # the bytes as one fragment: only what a decoder would make of them differs
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([pixels.tobytes()])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    buf = io.BytesIO()
    if preamble:
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    else:  # a bare dataset, as old exports write it: no preamble, no file meta
        del ds.file_meta
        pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def grey_phantom(index: int = 0, size: int = 40) -> np.ndarray:
    """A synthetic phantom's grey channel, stretched so its min is 0 and its max 255."""
    from medtune.datasets.synthetic import generate

    x, _, _ = generate(1, size, seed=5)
    grey = x[index % len(x)][:, :, 0].astype(np.float64)
    return np.rint((grey - grey.min()) * 255.0 / (grey.max() - grey.min())).astype(np.uint8)
