"""Clean Pixel Data (DEID.md 4.4 step 3, mechanics): ultrasound outside its regions, bits above High Bit."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.pixels import get_decoder, get_encoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from dicom_node.dicom.deid import DeidPolicy, DeidRejected, DeidResult, deidentify_dataset
from dicom_node.dicom.deid_clean import clean_pixels, write_cleaned
from dicom_node.dicom.deid_keys import DeidKeys
from dicom_node.dicom.deid_pixels import CLEANED_BITS_ABOVE_HIGH_BIT, CLEANED_US_REGIONS
from tests.harness.datasets import PATIENT_ID_CANARY, make_ct, make_us

KEYS = DeidKeys.from_secret(bytes(range(32)))
POLICY = DeidPolicy()
BURNED_IN = "deid.burned_in_uncleaned"
CLEAN_PIXEL_DATA = "113101"


def deidentify(ds: Dataset) -> DeidResult:
    return deidentify_dataset(ds, POLICY, KEYS)


def encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def reread(ds: Dataset) -> Dataset:
    return dcmread(io.BytesIO(encoded(ds)))


def inside_mask(rows: int, columns: int, regions: list[tuple[int, int, int, int]]) -> np.ndarray:
    inside = np.zeros((rows, columns), dtype=bool)
    for min_x, min_y, max_x, max_y in regions:
        inside[min_y : max_y + 1, min_x : max_x + 1] = True
    return inside


def frames_of(ds: Dataset) -> np.ndarray:
    """(frames, rows, columns, samples), decoded by pydicom from what was written."""
    frames = int(ds.get("NumberOfFrames") or 1)
    return ds.pixel_array.reshape(frames, ds.Rows, ds.Columns, ds.SamplesPerPixel)


def assert_recorded_as_cleaned(result: DeidResult, decision: str) -> None:
    out = result.dataset
    assert result.report.pixel_decision == decision
    assert out.BurnedInAnnotation == "NO"
    assert out.PatientIdentityRemoved == "YES"
    codes = [(item.CodeValue, item.CodingSchemeDesignator) for item in out.DeidentificationMethodCodeSequence]
    assert codes[0] == ("113100", "DCM")
    assert (CLEAN_PIXEL_DATA, "DCM") in codes
    meaning = {item.CodeValue: item.CodeMeaning for item in out.DeidentificationMethodCodeSequence}
    assert meaning[CLEAN_PIXEL_DATA] == "Clean Pixel Data Option"
    assert any(
        value.startswith("options:") and CLEAN_PIXEL_DATA in value for value in out.DeidentificationMethod
    )


# --- Ultrasound: zero outside the union of the regions ---


REGIONS = [(4, 8, 30, 40), (20, 2, 60, 20)]


@pytest.mark.parametrize(
    ("frames", "samples", "planar"),
    [(1, 1, 0), (5, 1, 0), (3, 3, 0), (3, 3, 1)],
    ids=["grey", "grey-multiframe", "rgb-by-pixel", "rgb-by-plane"],
)
def test_ultrasound_pixels_outside_the_regions_are_zero_in_every_frame_and_sample(
    frames: int, samples: int, planar: int
) -> None:
    ds = make_us(frames=frames, samples=samples, planar=planar, regions=REGIONS)
    before = frames_of(ds).copy()
    assert np.all(before > 0)

    result = deidentify(ds)

    out = reread(result.dataset)
    after = frames_of(out)
    inside = inside_mask(ds.Rows, ds.Columns, REGIONS)
    assert after.shape == before.shape
    assert np.all(after[:, ~inside] == 0)
    assert np.array_equal(after[:, inside], before[:, inside])
    assert_recorded_as_cleaned(result, CLEANED_US_REGIONS)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.get("PlanarConfiguration") == ds.get("PlanarConfiguration")
    assert len(out.SequenceOfUltrasoundRegions) == len(REGIONS)


def test_cleaning_does_not_change_the_input() -> None:
    ds = make_us(frames=2, regions=REGIONS)
    ds.BurnedInAnnotation = "YES"
    before = copy.deepcopy(ds)
    result = deidentify(ds)
    assert ds == before
    assert ds.PixelData == before.PixelData
    assert ds.BurnedInAnnotation == "YES"
    assert result.dataset.BurnedInAnnotation == "NO"


def test_writing_cleaned_pixels_replaces_elements_rather_than_changing_shared_ones() -> None:
    """The output body may share element objects with the input (no deep copy): only new ones go in."""
    ds = make_us(regions=REGIONS)
    original = bytes(ds.PixelData)
    body = Dataset()
    for element in ds:
        body.add(element)  # the very same DataElement objects
    cleaned = clean_pixels(ds, str(ds.file_meta.TransferSyntaxUID), frozenset(), ultrasound=True)
    assert cleaned is not None
    write_cleaned(body, cleaned)
    assert ds.PixelData == original
    assert body.PixelData != original


def test_burned_in_annotation_yes_on_an_ultrasound_with_regions_is_cleaned() -> None:
    ds = make_us(regions=REGIONS)
    ds.BurnedInAnnotation = "YES"
    result = deidentify(ds)
    assert_recorded_as_cleaned(result, CLEANED_US_REGIONS)


def test_modality_us_with_regions_outside_an_ultrasound_class_is_cleaned() -> None:
    ds = make_ct(rows=48, columns=64)
    ds.Modality = "US"
    us = make_us(regions=REGIONS)
    ds.SequenceOfUltrasoundRegions = us.SequenceOfUltrasoundRegions
    result = deidentify(ds)
    assert_recorded_as_cleaned(result, CLEANED_US_REGIONS)


def test_the_patient_id_spelled_in_the_pixel_bytes_still_rejects_a_cleanable_ultrasound() -> None:
    ds = make_us(regions=REGIONS)
    pixels = bytearray(ds.PixelData)
    start = 10 * ds.Columns + 10  # row 10, column 10: inside the first region
    pixels[start : start + len(PATIENT_ID_CANARY)] = PATIENT_ID_CANARY.encode()
    ds.PixelData = bytes(pixels)
    with pytest.raises(DeidRejected) as raised:
        deidentify(ds)
    assert raised.value.code == BURNED_IN


def test_an_ultrasound_without_regions_is_rejected() -> None:
    with pytest.raises(DeidRejected) as raised:
        deidentify(make_us(regions=None))
    assert raised.value.code == BURNED_IN


@pytest.mark.parametrize(
    "change",
    [
        lambda ds: setattr(ds, "ImageType", ["DERIVED", "SECONDARY"]),
        lambda ds: setattr(ds, "SeriesDescription", "Screen Save"),
        lambda ds: ds.add_new(0x60000100, "US", 8),
    ],
    ids=["secondary", "screen-save", "overlay-in-pixel-bits"],
)
def test_an_ultrasound_at_risk_for_another_reason_is_rejected_despite_its_regions(change: object) -> None:
    ds = make_us(regions=REGIONS)
    assert callable(change)
    change(ds)
    with pytest.raises(DeidRejected) as raised:
        deidentify(ds)
    assert raised.value.code == BURNED_IN


def region(min_x: int | None, min_y: int, max_x: int, max_y: int) -> Dataset:
    item = Dataset()
    if min_x is not None:
        item.RegionLocationMinX0 = min_x
    item.RegionLocationMinY0 = min_y
    item.RegionLocationMaxX1 = max_x
    item.RegionLocationMaxY1 = max_y
    return item


@pytest.mark.parametrize(
    "regions",
    [
        [],
        [region(None, 0, 10, 10)],
        [region(20, 0, 10, 10)],
        [region(0, 20, 10, 10)],
        [region(64, 0, 70, 10)],
        [region(0, 48, 10, 50)],
        [region(0, 0, 10, 10), region(5, 5, 1, 1)],
    ],
    ids=["empty", "corner-missing", "x-reversed", "y-reversed", "x-outside", "y-outside", "one-bad-of-two"],
)
def test_invalid_or_empty_regions_reject_the_instance(regions: list[Dataset]) -> None:
    ds = make_us(regions=REGIONS)
    ds.SequenceOfUltrasoundRegions = Sequence(regions)
    with pytest.raises(DeidRejected) as raised:
        deidentify(ds)
    assert raised.value.code == BURNED_IN


def test_a_region_past_the_last_column_is_cut_at_the_edge() -> None:
    """Real files (OBXXXX1A.dcm) put MaxX1 at Columns; the pixels that exist are cleaned all the same."""
    ds = make_us(regions=[(10, 10, 64, 60)])
    before = frames_of(ds).copy()
    out = reread(deidentify(ds).dataset)
    inside = inside_mask(ds.Rows, ds.Columns, [(10, 10, 63, 47)])
    assert np.all(frames_of(out)[:, ~inside] == 0)
    assert np.array_equal(frames_of(out)[:, inside], before[:, inside])


# --- Compressed ultrasound: decoded, cleaned, written Explicit VR Little Endian ---


def rle_available() -> bool:
    return bool(get_encoder(RLELossless).is_available)


@pytest.mark.parametrize(("frames", "samples"), [(1, 1), (3, 3)], ids=["grey", "rgb-multiframe"])
def test_a_compressed_ultrasound_is_decoded_cleaned_and_written_uncompressed(
    frames: int, samples: int
) -> None:
    assert rle_available(), "pydicom's own RLE encoder ships with pydicom"
    ds = make_us(frames=frames, samples=samples, regions=REGIONS)
    before = frames_of(ds).copy()
    ds.compress(RLELossless, encoding_plugin="pydicom")
    assert ds.file_meta.TransferSyntaxUID == RLELossless

    result = deidentify(ds)

    out = reread(result.dataset)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not out["PixelData"].is_undefined_length
    assert len(out.PixelData) == frames * ds.Rows * ds.Columns * samples
    after = frames_of(out)
    inside = inside_mask(ds.Rows, ds.Columns, REGIONS)
    assert np.all(after[:, ~inside] == 0)
    assert np.array_equal(after[:, inside], before[:, inside])
    assert out.PhotometricInterpretation == ds.PhotometricInterpretation
    assert_recorded_as_cleaned(result, CLEANED_US_REGIONS)
    assert ds.file_meta.TransferSyntaxUID == RLELossless, "the input keeps its transfer syntax"


def test_a_compressed_ybr_ultrasound_is_written_as_rgb() -> None:
    ds = make_us(samples=3, regions=REGIONS)
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.compress(RLELossless, encoding_plugin="pydicom")
    out = reread(deidentify(ds).dataset)
    assert out.PhotometricInterpretation == "RGB"
    assert out.PlanarConfiguration == 0
    inside = inside_mask(ds.Rows, ds.Columns, REGIONS)
    assert np.all(frames_of(out)[:, ~inside] == 0)


def test_a_compressed_ultrasound_no_installed_decoder_reads_is_rejected() -> None:
    ds = make_us(regions=REGIONS)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    with pytest.raises(DeidRejected) as raised:
        deidentify(ds)
    assert raised.value.code == BURNED_IN


# --- Bits above High Bit (native data only) ---


def test_bits_above_the_high_bit_are_cleared_and_the_stored_values_kept() -> None:
    ds = make_ct()
    stored = np.frombuffer(ds.PixelData, dtype="<u2").copy()
    dirty = stored.copy()
    dirty[:128] |= 0x2000  # bit 13: BitsStored is 12
    dirty[200] |= 0xF000
    ds.PixelData = dirty.tobytes()

    result = deidentify(ds)

    values = np.frombuffer(result.dataset.PixelData, dtype="<u2")
    assert not np.any(values >> 12)
    assert np.array_equal(values, stored)
    assert_recorded_as_cleaned(result, CLEANED_BITS_ABOVE_HIGH_BIT)
    assert result.dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(np.frombuffer(ds.PixelData, dtype="<u2"), dirty), "the input keeps its bytes"


def signed_ct(values: np.ndarray) -> Dataset:
    ds = make_ct(rows=8, columns=8)
    ds.PixelRepresentation = 1
    ds.PixelData = values.astype("<i2").tobytes()
    return ds


def test_bits_above_the_high_bit_of_signed_values_become_the_sign_extension() -> None:
    rng = np.random.default_rng(1)
    stored = rng.integers(-2048, 2048, size=64, dtype=np.int16)
    dirty = stored.view(np.uint16).copy()
    dirty[::3] ^= 0x5000  # garbage in bits 12 and 14 of every third pixel
    ds = signed_ct(dirty.view(np.int16))

    result = deidentify(ds)

    values = np.frombuffer(result.dataset.PixelData, dtype="<i2")
    assert np.array_equal(values, stored)
    top = values >> 11
    assert np.all((top == 0) | (top == -1))
    assert result.report.pixel_decision == CLEANED_BITS_ABOVE_HIGH_BIT


def test_properly_sign_extended_values_are_kept_byte_for_byte() -> None:
    stored = np.arange(-32, 32, dtype=np.int16) * 64  # -2048 to 1984: every value fits in 12 bits
    ds = signed_ct(stored)
    result = deidentify(ds)
    assert result.dataset.PixelData == ds.PixelData
    assert result.report.pixel_decision == "not_at_risk"
    assert "BurnedInAnnotation" not in result.dataset
    codes = {item.CodeValue for item in result.dataset.DeidentificationMethodCodeSequence}
    assert CLEAN_PIXEL_DATA not in codes


def test_bits_above_the_high_bit_are_cleared_in_big_endian_data() -> None:
    ds = make_ct(rows=8, columns=8)
    stored = np.frombuffer(ds.PixelData, dtype="<u2").copy()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = (stored | 0x8000).astype(">u2").tobytes()
    result = deidentify(ds)
    assert result.dataset.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    assert np.array_equal(np.frombuffer(result.dataset.PixelData, dtype=">u2"), stored)
    assert result.report.pixel_decision == CLEANED_BITS_ABOVE_HIGH_BIT


# --- Real data: pydicom's test files ---


def read_testdata(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"{name} ships with pydicom or pydicom-data"
    return dcmread(path)


@pytest.mark.parametrize(
    "name",
    [
        "OBXXXX1A.dcm",
        "OBXXXX1A_expb.dcm",
        "OBXXXX1A_2frame.dcm",
        "OBXXXX1A_rle_2frame.dcm",
        "gdcm-US-ALOKA-16.dcm",
        "gdcm-US-ALOKA-16_big.dcm",
    ],
)
def test_real_ultrasound_files_with_regions_are_cleaned_outside_them(name: str) -> None:
    ds = read_testdata(name)
    regions = [
        (
            item.RegionLocationMinX0,
            item.RegionLocationMinY0,
            min(item.RegionLocationMaxX1, ds.Columns - 1),
            min(item.RegionLocationMaxY1, ds.Rows - 1),
        )
        for item in ds.SequenceOfUltrasoundRegions
    ]
    before = frames_of(ds).copy()

    result = deidentify(ds)

    out = reread(result.dataset)
    after = frames_of(out)
    inside = inside_mask(ds.Rows, ds.Columns, regions)
    assert np.all(after[:, ~inside] == 0)
    assert np.array_equal(after[:, inside], before[:, inside])
    assert np.any(before[:, ~inside]), "the file had something outside its regions to remove"
    assert_recorded_as_cleaned(result, CLEANED_US_REGIONS)
    expected_syntax = ds.file_meta.TransferSyntaxUID
    if UID(expected_syntax).is_compressed:
        expected_syntax = ExplicitVRLittleEndian
    assert out.file_meta.TransferSyntaxUID == expected_syntax


@pytest.mark.parametrize(
    "name",
    [
        "US1_UNCR.dcm",  # no regions
        # No regions; Pillow decodes its JPEG 2000 now (see below), so that is the only reason left.
        "US1_J2KR.dcm",
        "examples_palette.dcm",  # a region starts below the last row: the regions do not fit this image
    ],
)
def test_real_ultrasound_files_that_cannot_be_cleaned_with_certainty_are_rejected(name: str) -> None:
    with pytest.raises(DeidRejected) as raised:
        deidentify(read_testdata(name))
    assert raised.value.code == BURNED_IN


def test_a_jpeg_2000_ultrasound_without_regions_is_rejected_for_its_regions_not_its_codec() -> None:
    ds = read_testdata("US1_J2KR.dcm")
    assert get_decoder(JPEG2000Lossless).is_available, "Pillow (a dependency) decodes JPEG 2000"
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns, 3)
    assert "SequenceOfUltrasoundRegions" not in ds
    with pytest.raises(DeidRejected) as raised:
        deidentify(ds)
    assert raised.value.code == BURNED_IN


def assert_lossy_jpeg_cleaned_outside_regions(
    ds: Dataset, regions: list[tuple[int, int, int, int]]
) -> Dataset:
    """De-identify a JPEG baseline ultrasound; the decoded input is the reference (the codec is lossy)."""
    before = frames_of(ds).copy()  # pydicom's decoding, YBR converted to RGB as the engine's
    result = deidentify(ds)
    out = reread(result.dataset)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not out["PixelData"].is_undefined_length
    after = frames_of(out)
    inside = inside_mask(ds.Rows, ds.Columns, regions)
    assert np.any(before[:, ~inside]), "the image had something outside its regions to remove"
    assert np.all(after[:, ~inside] == 0)
    assert np.array_equal(after[:, inside], before[:, inside])
    assert_recorded_as_cleaned(result, CLEANED_US_REGIONS)
    # PS3.3 C.7.6.1.1.5: once lossy, always "01", even written uncompressed; the method is named.
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == "ISO_10918_1"
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit, "the input keeps its transfer syntax"
    return out


def test_a_real_jpeg_baseline_ultrasound_with_regions_is_cleaned_outside_them() -> None:
    """color3d_jpeg_baseline.dcm: 120 YBR_FULL_422 frames, one region, lossy ratio 19 and no method."""
    ds = read_testdata("color3d_jpeg_baseline.dcm")
    regions = [
        (r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1)
        for r in ds.SequenceOfUltrasoundRegions
    ]
    out = assert_lossy_jpeg_cleaned_outside_regions(ds, regions)
    assert out.PhotometricInterpretation == "RGB"
    assert out.LossyImageCompressionRatio == ds.LossyImageCompressionRatio, "the input's ratio is kept"


def test_a_jpeg_baseline_ultrasound_built_with_pillow_is_cleaned_outside_its_regions() -> None:
    """pydicom 3 has no JPEG baseline encoder, so Pillow encodes the frame and pydicom encapsulates it."""
    ds = make_us(rows=64, columns=80, regions=REGIONS)
    frame = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(ds.Rows, ds.Columns)
    buffer = io.BytesIO()
    Image.fromarray(frame, mode="L").save(buffer, format="JPEG", quality=90)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    assert "LossyImageCompression" not in ds
    assert_lossy_jpeg_cleaned_outside_regions(ds, REGIONS)


@pytest.mark.parametrize(
    "name",
    ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm", "CT_small.dcm", "RG1_UNCR.dcm"],
)
def test_real_ct_and_mr_files_with_clean_high_bits_keep_their_pixel_bytes(name: str) -> None:
    ds = read_testdata(name)
    result = deidentify(ds)
    assert result.dataset.PixelData == ds.PixelData
    assert result.report.pixel_decision == "not_at_risk"


def test_real_signed_data_with_bits_above_the_high_bit_keeps_its_stored_values() -> None:
    """mlut_18.dcm: 12 of 16 bits, signed, bits set above High Bit; pydicom's decoder ignores them."""
    ds = read_testdata("mlut_18.dcm")
    expected = ds.pixel_array  # pydicom corrects unused bits on decoding
    cleaned = clean_pixels(ds, str(ds.file_meta.TransferSyntaxUID), frozenset(), ultrasound=False)
    assert cleaned is not None
    assert cleaned.decision == CLEANED_BITS_ABOVE_HIGH_BIT
    values = np.frombuffer(cleaned.pixel_data, dtype="<i2").reshape(expected.shape)
    assert np.array_equal(values, expected)
    assert not np.array_equal(np.frombuffer(ds.PixelData, dtype="<i2").reshape(expected.shape), expected)
