"""Synthetic instances with a full CT header and no real PHI (canary values where a test wants them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

PATIENT_NAME_CANARY = "CANARY^PATIENTNAME"
PATIENT_ID_CANARY = "CANARYMRN4711"


def make_ct(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    rows: int = 64,
    columns: int = 64,
    instance_number: int = 1,
    patient_id: str = PATIENT_ID_CANARY,
    patient_name: str = PATIENT_NAME_CANARY,
    seed: int = 0,
) -> Dataset:
    """A CT Image Storage instance, Explicit VR Little Endian, 16 bits allocated / 12 stored."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.Manufacturer = "dicom-node tests"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0.0, 0.0, float(instance_number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.KVP = 120
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16).tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_us(
    *,
    rows: int = 48,
    columns: int = 64,
    frames: int = 1,
    samples: int = 1,
    planar: int = 0,
    regions: list[tuple[int, int, int, int]] | None = None,
    seed: int = 0,
) -> Dataset:
    """An Ultrasound (Multi-frame) Image Storage instance, 8 bits, Explicit VR Little Endian.

    Every pixel value is non-zero, so zeroing shows; `regions` are (min x, min y, max x, max y), inclusive.
    """
    ds = make_ct(rows=rows, columns=columns, seed=seed)
    for keyword in (
        "KVP",
        "RescaleIntercept",
        "RescaleSlope",
        "WindowCenter",
        "WindowWidth",
        "SliceThickness",
    ):
        delattr(ds, keyword)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "FrameOfReferenceUID"):
        delattr(ds, keyword)
    sop_class = UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = "US"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples > 1:
        ds.PlanarConfiguration = planar
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameTime = 33.3
        ds.FrameIncrementPointer = Tag(0x00181063)
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(1, 256, size=frames * rows * columns * samples, dtype=np.uint8).tobytes()
    if regions is not None:
        items = []
        for min_x, min_y, max_x, max_y in regions:
            item = Dataset()
            item.RegionSpatialFormat = 1
            item.RegionDataType = 1
            item.RegionFlags = 0
            item.RegionLocationMinX0 = min_x
            item.RegionLocationMinY0 = min_y
            item.RegionLocationMaxX1 = max_x
            item.RegionLocationMaxY1 = max_y
            item.PhysicalUnitsXDirection = 3
            item.PhysicalUnitsYDirection = 3
            item.PhysicalDeltaX = 0.01
            item.PhysicalDeltaY = 0.01
            items.append(item)
        ds.SequenceOfUltrasoundRegions = Sequence(items)
    return ds
