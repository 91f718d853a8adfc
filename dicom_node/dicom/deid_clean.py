"""Clean Pixel Data (DEID.md 4.4 step 3, mechanics): new stored values for an instance, its input unchanged.

Two methods: bits above High Bit cleared in uncompressed data (overlays and other payloads hide there), and an
ultrasound image zeroed outside the union of its Sequence of Ultrasound Regions, in every frame and sample. An
image the methods cannot vouch for raises PixelsNotCleaned; none is passed uncertain.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
)

from dicom_node.dicom.deid_pixels import (
    CLEANED_BITS_ABOVE_HIGH_BIT,
    CLEANED_US_REGIONS,
    REASON_BURNED_IN,
    REASON_MALFORMED,
)
from dicom_node.dicom.deid_tokens import MIN_PIXEL_TOKEN, bytes_contain

if TYPE_CHECKING:
    from collections.abc import Mapping

    from numpy.typing import NDArray
    from pydicom.dataset import Dataset

PIXEL_DATA: Final = 0x7FE00010
# PS3.5 A.4: offset tables of encapsulated pixel data; meaningless once the data is written uncompressed.
_EXTENDED_OFFSET_TABLES: Final = (0x7FE00001, 0x7FE00002)
# Uncompressed transfer syntaxes (PS3.5 A.1 to A.3; deflate is inflated on read): stored values are plain.
_NATIVE_LITTLE: Final = frozenset({"", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"})
_NATIVE_BIG: Final = "1.2.840.10008.1.2.2"
# Transfer syntaxes that are lossy whatever the encoder did (PS3.3 C.7.6.1.1.5: the image stays "01").
_ALWAYS_LOSSY: Final = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless})
# Native layouts numpy can address pixel by pixel; subsampled YBR and packed bits go through the decoder.
_WHOLE_BYTES: Final = frozenset({8, 16, 32})
_SUBSAMPLED: Final = frozenset({"YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420"})
_REGION_CORNERS: Final = (
    "RegionLocationMinX0",
    "RegionLocationMinY0",
    "RegionLocationMaxX1",
    "RegionLocationMaxY1",
)
# Image Pixel attributes the decoder reports (pydicom's pixel properties), by DICOM keyword.
_DECODED_PROPERTIES: Final = MappingProxyType(
    {
        "samples_per_pixel": "SamplesPerPixel",
        "photometric_interpretation": "PhotometricInterpretation",
        "planar_configuration": "PlanarConfiguration",
        "bits_allocated": "BitsAllocated",
        "bits_stored": "BitsStored",
        "pixel_representation": "PixelRepresentation",
    }
)


class PixelsNotCleaned(Exception):
    """The pixel data could not be cleaned with certainty; `code` is the rejection reason."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class CleanedPixels:
    """New stored values for an instance, and the Image Pixel attributes that must change with them."""

    decision: str
    pixel_data: bytes
    pixel_vr: str
    # The output's transfer syntax when compressed pixel data was decoded; None: the input's stays.
    transfer_syntax: str | None
    # Element keyword to new value: Photometric Interpretation after YBR to RGB, Planar Configuration...
    attributes: Mapping[str, str | int]


@dataclass(frozen=True, slots=True)
class _Layout:
    rows: int
    columns: int
    samples: int
    frames: int
    planar: int
    allocated: int
    high_bit: int
    signed: bool


def clean_pixels(
    ds: Dataset, transfer_syntax: str, tokens: frozenset[str], *, ultrasound: bool
) -> CleanedPixels | None:
    """The cleaned pixel data of `ds`, or None when nothing needs to change (the bytes are kept as they are).

    `ultrasound`: the instance is at risk as an ultrasound image (deid_pixels.ultrasound_regions_apply), so
    everything outside its regions is zeroed; otherwise only bits above High Bit of uncompressed data are.
    Raises PixelsNotCleaned.
    """
    if PIXEL_DATA not in ds:
        if ultrasound:
            raise PixelsNotCleaned(REASON_BURNED_IN)
        return None
    try:
        data = ds[PIXEL_DATA].value
        layout = _layout(ds)
    except Exception as exc:  # an element pydicom cannot decode raises whatever its converter raises
        if not ultrasound:
            return None  # no Image Pixel module to read stored values by: nothing to clear
        raise PixelsNotCleaned(REASON_MALFORMED) from exc
    if not isinstance(data, bytes | bytearray):
        raise PixelsNotCleaned(REASON_MALFORMED)
    vr = str(ds[PIXEL_DATA].VR)
    if vr not in ("OB", "OW"):
        vr = "OB" if layout.allocated == 8 else "OW"
    native = transfer_syntax in _NATIVE_LITTLE or transfer_syntax == _NATIVE_BIG
    if not ultrasound:
        if not native:
            return None
        cleared = _clear_bits_above_high_bit(bytes(data), layout, big_endian=transfer_syntax == _NATIVE_BIG)
        if cleared is None:
            return None
        return CleanedPixels(CLEANED_BITS_ABOVE_HIGH_BIT, cleared, vr, None, MappingProxyType({}))
    inside = _inside_regions(ds, layout)
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    if native and layout.allocated in _WHOLE_BYTES and photometric not in _SUBSAMPLED:
        big_endian = transfer_syntax == _NATIVE_BIG
        stored = _clear_bits_above_high_bit(bytes(data), layout, big_endian=big_endian) or bytes(data)
        cleaned = _zero_outside_native(stored, layout, inside)
        return CleanedPixels(CLEANED_US_REGIONS, cleaned, vr, None, MappingProxyType({}))
    return _zero_outside_decoded(ds, transfer_syntax, layout, inside, tokens)


def write_cleaned(body: Dataset, cleaned: CleanedPixels) -> None:
    """Put cleaned pixels into the output data set as new elements: the input's elements are never changed."""
    for keyword, value in cleaned.attributes.items():
        element = DataElement(keyword, "CS" if isinstance(value, str) else "US", value)
        body[element.tag] = element
    if cleaned.transfer_syntax is not None:
        for tag in _EXTENDED_OFFSET_TABLES:
            if tag in body:
                del body[tag]
    body[PIXEL_DATA] = DataElement(PIXEL_DATA, cleaned.pixel_vr, cleaned.pixel_data)


def _integer(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise ValueError(f"{keyword} missing")
        return default
    number = int(value)
    if number < 0:
        raise ValueError(f"{keyword} negative")
    return number


def _layout(ds: Dataset) -> _Layout:
    """The Image Pixel module (PS3.3 C.7.6.3) as numbers; ValueError when it cannot describe the data."""
    allocated = _integer(ds, "BitsAllocated")
    stored = _integer(ds, "BitsStored", allocated)
    layout = _Layout(
        rows=_integer(ds, "Rows"),
        columns=_integer(ds, "Columns"),
        samples=_integer(ds, "SamplesPerPixel", 1),
        frames=_integer(ds, "NumberOfFrames", 1) or 1,
        planar=_integer(ds, "PlanarConfiguration", 0),
        allocated=allocated,
        high_bit=_integer(ds, "HighBit", stored - 1),
        signed=_integer(ds, "PixelRepresentation", 0) == 1,
    )
    if not (layout.rows and layout.columns and layout.samples and allocated) or layout.high_bit >= allocated:
        raise ValueError("image pixel module inconsistent")
    return layout


def _clear_bits_above_high_bit(data: bytes, layout: _Layout, *, big_endian: bool) -> bytes | None:
    """`data` with the bits above High Bit cleared, or copies of the sign bit when signed; None if so already.

    PS3.5 8.1.1: the bits above High Bit are not part of the value; here they could hide an overlay or text.
    """
    if layout.allocated not in _WHOLE_BYTES or layout.high_bit >= layout.allocated - 1:
        return None
    size = layout.allocated // 8
    dtype = np.dtype(("i" if layout.signed else "u") + str(size)).newbyteorder(">" if big_endian else "<")
    count = len(data) // size
    values = np.frombuffer(data, dtype=dtype, count=count)
    if count == 0 or _within_stored_bits(values, layout):
        return None  # the common case, told by a minimum and a maximum without building a cleared copy
    cleared = _sign_or_mask(values, layout)
    if np.array_equal(cleared, values):
        return None
    return cleared.astype(dtype, copy=False).tobytes() + data[count * size :]


def _within_stored_bits(values: NDArray[np.integer], layout: _Layout) -> bool:
    """Whether every value is already what `_sign_or_mask` makes of it: unsigned values fit in the stored
    bits (nothing above High Bit), signed ones lie in the range of a High Bit + 1 bit two's complement
    number (the bits above it are copies of the sign bit)."""
    if layout.signed:
        limit = 1 << layout.high_bit
        return bool(int(values.min()) >= -limit and int(values.max()) < limit)
    return bool(int(values.max()) < 1 << (layout.high_bit + 1))


def _sign_or_mask(values: NDArray[np.integer], layout: _Layout) -> NDArray[np.integer]:
    """The stored values only: masked to the stored bits, or sign-extended from High Bit."""
    if layout.signed:
        shift = values.dtype.itemsize * 8 - 1 - layout.high_bit
        # Arithmetic shifts on a signed type: the bits above High Bit become copies of the sign bit.
        return (values << shift) >> shift
    mask = (1 << (layout.high_bit + 1)) - 1
    return values & np.asarray(mask, dtype=values.dtype)


def _inside_regions(ds: Dataset, layout: _Layout) -> NDArray[np.bool_]:
    """The union of the ultrasound regions as a (rows, columns) mask (PS3.3 C.8.5.5.1, corners inclusive).

    A region missing a corner, or with corners reversed or starting outside the image, makes the whole
    sequence untrustworthy; a corner past the last row or column (seen in real files) is cut at the edge.
    """
    try:
        regions = ds["SequenceOfUltrasoundRegions"].value
        inside = np.zeros((layout.rows, layout.columns), dtype=bool)
        for region in regions or ():
            corners = [region.get(keyword) for keyword in _REGION_CORNERS]
            if any(not isinstance(value, int) or isinstance(value, bool) for value in corners):
                raise PixelsNotCleaned(REASON_BURNED_IN)
            min_x, min_y, max_x, max_y = (int(value) for value in corners)
            if not (0 <= min_x <= max_x and 0 <= min_y <= max_y):
                raise PixelsNotCleaned(REASON_BURNED_IN)
            if min_x >= layout.columns or min_y >= layout.rows:
                raise PixelsNotCleaned(REASON_BURNED_IN)
            inside[min_y : max_y + 1, min_x : max_x + 1] = True
    except PixelsNotCleaned:
        raise
    except Exception as exc:
        raise PixelsNotCleaned(REASON_BURNED_IN) from exc
    if not inside.any():
        raise PixelsNotCleaned(REASON_BURNED_IN)
    return inside


def _zero_outside_native(data: bytes, layout: _Layout, inside: NDArray[np.bool_]) -> bytes:
    """Uncompressed pixel bytes with every sample of every frame outside `inside` set to zero."""
    size = layout.allocated // 8
    needed = layout.frames * layout.rows * layout.columns * layout.samples * size
    if len(data) < needed:
        raise PixelsNotCleaned(REASON_MALFORMED)
    buffer = np.frombuffer(data, dtype=np.uint8).copy()
    pixels = buffer[:needed]
    outside = ~inside
    if layout.samples > 1 and layout.planar == 1:
        # Colour-by-plane (PS3.3 C.7.6.3.1.3): each sample is a whole plane of the frame.
        planes = pixels.reshape(layout.frames, layout.samples, layout.rows, layout.columns, size)
        planes[:, :, outside] = 0
    else:
        interleaved = pixels.reshape(layout.frames, layout.rows, layout.columns, layout.samples * size)
        interleaved[:, outside] = 0
    # Bytes past the last frame (the padding byte, or excess data) are no pixel: nothing may hide there.
    buffer[needed:] = 0
    return buffer.tobytes()


def _zero_outside_decoded(
    ds: Dataset, transfer_syntax: str, layout: _Layout, inside: NDArray[np.bool_], tokens: frozenset[str]
) -> CleanedPixels:
    """Decode, zero outside the regions, write Explicit VR Little Endian; undecodable data is not cleaned."""
    try:
        decoder = get_decoder(UID(transfer_syntax or ExplicitVRLittleEndian))
    except NotImplementedError as exc:
        raise PixelsNotCleaned(REASON_BURNED_IN) from exc
    if not decoder.is_available:
        raise PixelsNotCleaned(REASON_BURNED_IN)
    try:
        # pydicom's defaults: YBR_FULL(_422) converted to RGB, unused bits corrected (sign-corrected for
        # JPEG-LS and JPEG 2000); the bits above High Bit are cleared again below all the same.
        array, properties = decoder.as_array(ds)
    except Exception as exc:
        raise PixelsNotCleaned(REASON_BURNED_IN) from exc
    samples = int(properties.get("samples_per_pixel", layout.samples))
    allocated = int(properties.get("bits_allocated", layout.allocated))
    signed = int(properties.get("pixel_representation", int(layout.signed))) == 1
    stored = int(properties.get("bits_stored", layout.high_bit + 1))
    if allocated not in _WHOLE_BYTES or array.size != layout.frames * layout.rows * layout.columns * samples:
        raise PixelsNotCleaned(REASON_BURNED_IN)
    dtype = np.dtype(("i" if signed else "u") + str(allocated // 8)).newbyteorder("<")
    pixels = array.reshape(layout.frames, layout.rows, layout.columns, samples).astype(dtype)
    decoded = _Layout(
        rows=layout.rows,
        columns=layout.columns,
        samples=samples,
        frames=layout.frames,
        planar=0,
        allocated=allocated,
        high_bit=stored - 1,
        signed=signed,
    )
    if decoded.high_bit < allocated - 1:
        pixels = _sign_or_mask(pixels, decoded).astype(dtype, copy=False)
    pixels[:, ~inside] = 0
    cleaned = pixels.tobytes()
    if len(cleaned) % 2:
        cleaned += b"\0"
    # The compressed bytes were searched before; the decoded values are searched too.
    if bytes_contain(cleaned, tokens, MIN_PIXEL_TOKEN):
        raise PixelsNotCleaned(REASON_BURNED_IN)
    return CleanedPixels(
        decision=CLEANED_US_REGIONS,
        pixel_data=cleaned,
        pixel_vr="OB" if allocated == 8 else "OW",
        transfer_syntax=str(ExplicitVRLittleEndian),
        attributes=MappingProxyType(_decoded_attributes(ds, properties, transfer_syntax, samples, stored)),
    )


def _decoded_attributes(
    ds: Dataset, properties: Mapping[str, str | int], transfer_syntax: str, samples: int, stored: int
) -> dict[str, str | int]:
    """The Image Pixel attributes that differ once decoded (YBR_FULL_422 is RGB now), nothing else."""
    changed: dict[str, str | int] = {}
    for name, keyword in _DECODED_PROPERTIES.items():
        if name not in properties or (name == "planar_configuration" and samples == 1):
            continue
        value = properties[name]
        if ds.get(keyword) != value:
            changed[keyword] = value
    if samples > 1 and ds.get("PlanarConfiguration") != 0:
        changed["PlanarConfiguration"] = 0  # the decoder returns colour-by-pixel
    if "BitsStored" in changed:
        changed["HighBit"] = stored - 1
    # PS3.3 C.7.6.1.1.5: once lossy compressed, an image stays "01" even when written uncompressed, and its
    # Lossy Image Compression Ratio and Method stay as they were (the walk keeps them; nothing is re-encoded
    # lossily here, so nothing is appended). Where the input did not say how, its transfer syntax does.
    lossy = str(ds.get("LossyImageCompression") or "").strip() == "01"
    if transfer_syntax in _ALWAYS_LOSSY and not lossy:
        changed["LossyImageCompression"] = "01"
        lossy = True
    method = _LOSSY_METHODS.get(transfer_syntax)
    if lossy and method is not None and not ds.get("LossyImageCompressionMethod"):
        changed["LossyImageCompressionMethod"] = method
    return changed


# PS3.3 C.7.6.1.1.5.1 (CID 7201): the method a lossy transfer syntax names.
_LOSSY_METHODS: Final = MappingProxyType(
    {
        str(JPEGBaseline8Bit): "ISO_10918_1",
        str(JPEGExtended12Bit): "ISO_10918_1",
        str(JPEGLSNearLossless): "ISO_14495_1",
        "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000 (lossy or not: only when the input says lossy)
    }
)
