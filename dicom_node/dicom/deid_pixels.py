"""Whether an instance's pixels may carry burned-in identity (DEID.md 4.4 steps 1 and 2).

The decision never decodes compressed pixel data. An at-risk instance is rejected unless it is an ultrasound
image that the regions method of `deid_clean` can clean; every other instance keeps its pixel values.
"""

from __future__ import annotations

import re
from functools import cache
from typing import TYPE_CHECKING, Final

from pydicom.datadict import tag_for_keyword

from dicom_node.dicom.deid_tokens import MIN_PIXEL_TOKEN, bytes_contain, read_element

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pydicom.dataset import Dataset

NOT_AT_RISK: Final = "not_at_risk"
# Pixel decisions of a cleaned instance (DEID.md 4.4 step 3 and mechanics); both claim Clean Pixel Data.
CLEANED_US_REGIONS: Final = "cleaned_us_regions"
CLEANED_BITS_ABOVE_HIGH_BIT: Final = "cleaned_bits_above_high_bit"
REASON_BURNED_IN: Final = "deid.burned_in_uncleaned"
REASON_ENCAPSULATED: Final = "deid.encapsulated_document"
REASON_MALFORMED: Final = "deid.malformed_required"

_STORAGE: Final = "1.2.840.10008.5.1.4.1.1."
# PS3.4 B.5: Encapsulated PDF, CDA, STL, OBJ and MTL Storage; documents are not inference inputs.
ENCAPSULATED_DOCUMENT_CLASSES: Final = frozenset(
    _STORAGE + suffix for suffix in ("104.1", "104.2", "104.3", "104.4", "104.5")
)
# PS3.4 B.5: classes whose pixels routinely carry text (DEID.md 4.4 step 1): US, SC, XA/XRF, VL, video.
AT_RISK_CLASSES: Final = frozenset(
    _STORAGE + suffix
    for suffix in (
        "3",  # Ultrasound Multi-frame (retired)
        "3.1",  # Ultrasound Multi-frame
        "6",  # Ultrasound (retired)
        "6.1",  # Ultrasound
        "6.2",  # Enhanced US Volume
        "7",  # Secondary Capture
        "7.1",
        "7.2",
        "7.3",
        "7.4",  # Multi-frame Secondary Capture
        "12.1",  # X-Ray Angiographic
        "12.1.1",  # Enhanced XA
        "12.2",  # X-Ray Radiofluoroscopic
        "12.2.1",  # Enhanced XRF
        "12.3",  # X-Ray Angiographic Bi-Plane (retired)
        "77.1.1",  # VL Endoscopic
        "77.1.1.1",  # Video Endoscopic
        "77.1.2",  # VL Microscopic
        "77.1.2.1",  # Video Microscopic
        "77.1.3",  # VL Slide-Coordinates Microscopic
        "77.1.4",  # VL Photographic
        "77.1.4.1",  # Video Photographic
        "77.1.5.1",  # Ophthalmic Photography 8 Bit
        "77.1.5.2",  # Ophthalmic Photography 16 Bit
        "77.1.5.5",  # Wide Field Ophthalmic Photography Stereographic
        "77.1.5.6",  # Wide Field Ophthalmic Photography 3D
        "77.1.6",  # VL Whole Slide Microscopy (slide labels)
        "77.1.7",  # Dermoscopic Photography
        "77.1.8",  # Confocal Microscopy
        "77.1.9",  # Confocal Microscopy Tiled Pyramidal
    )
)
# PS3.4 B.5: the ultrasound classes whose images may carry a Sequence of Ultrasound Regions (PS3.3 C.8.5.5).
ULTRASOUND_CLASSES: Final = frozenset(_STORAGE + suffix for suffix in ("3", "3.1", "6", "6.1"))
AT_RISK_MODALITIES: Final = frozenset(
    {"US", "SC", "OT", "XC", "ES", "DOC", "GM", "SM", "XA", "RF", "IVUS", "OP"}
)
# CTP's heuristic for screen captures and dose sheets (DEID.md 4.4 step 1).
_AT_RISK_DESCRIPTION: Final = re.compile(r"SAVE|SCREEN|DOSE|REPORT", re.IGNORECASE)
_PIXEL_TAGS: Final = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_OVERLAY_BITS_ALLOCATED: Final = 0x0100


@cache
def _keyword_tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


def _text(ds: Dataset, keyword: str) -> list[str]:
    """The values of a string element as a list; raises when the element is present but undecodable."""
    tag = _keyword_tag(keyword)
    if tag not in ds._dict:
        return []
    value = read_element(ds, tag).value
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [str(value).strip()]
    return [str(item).strip() for item in value]


def pixel_risk(ds: Dataset) -> str:
    """NOT_AT_RISK, or the reason code the instance is rejected with unless it is cleaned."""
    try:
        sop_class = "".join(_text(ds, "SOPClassUID")).rstrip("\0 ")
        if sop_class in ENCAPSULATED_DOCUMENT_CLASSES or "EncapsulatedDocument" in ds:
            return REASON_ENCAPSULATED
        has_pixels = any(tag in ds for tag in _PIXEL_TAGS)
        if not has_pixels:
            return NOT_AT_RISK
        if not sop_class:
            # Without its class we cannot tell what the pixels are.
            return REASON_MALFORMED
        if next(_risks(ds, sop_class), None) is not None:
            return REASON_BURNED_IN
    except Exception:
        # An element the decision needs could not be read: we cannot vouch for the pixels.
        return REASON_MALFORMED
    return NOT_AT_RISK


def ultrasound_regions_apply(ds: Dataset) -> bool:
    """Whether an at-risk instance is at risk only as an ultrasound image that declares its regions.

    Only then may the regions method clean it (DEID.md 4.4 step 3); any other sign of burned-in text, a
    secondary capture, a screen save, an overlay in the pixel bits, keeps it rejected.
    """
    try:
        if pixel_risk(ds) != REASON_BURNED_IN or "SequenceOfUltrasoundRegions" not in ds:
            return False
        sop_class = "".join(_text(ds, "SOPClassUID")).rstrip("\0 ")
        risks = set(_risks(ds, sop_class))
    except Exception:
        return False
    return _ULTRASOUND in risks and risks <= {_ULTRASOUND, _FLAGGED}


_ULTRASOUND: Final = "ultrasound"
_FLAGGED: Final = "burned_in_annotation"


def _risks(ds: Dataset, sop_class: str) -> Iterator[str]:
    """Each sign that the pixels may carry burned-in text (DEID.md 4.4 step 1), lazily, cheapest first."""
    if sop_class in AT_RISK_CLASSES:
        yield _ULTRASOUND if sop_class in ULTRASOUND_CLASSES else "class"
    if any(value.upper() == "YES" for value in _text(ds, "BurnedInAnnotation")):
        yield _FLAGGED
    for value in _text(ds, "Modality"):
        if value.upper() in AT_RISK_MODALITIES:
            yield _ULTRASOUND if value.upper() == "US" else "modality"
    image_type = [value.upper() for value in _text(ds, "ImageType")]
    if "SECONDARY" in image_type or any("SCREEN SAVE" in value for value in image_type):
        yield "image_type"
    if any(_AT_RISK_DESCRIPTION.search(value) for value in _text(ds, "SeriesDescription")):
        yield "series_description"
    if _overlay_in_pixel_bits(ds):
        yield "overlay_in_pixel_bits"


def _overlay_in_pixel_bits(ds: Dataset) -> bool:
    """Whether a 60xx group puts its overlay in the pixel data's unused bits (PS3.3 C.9.2, retired)."""
    if not any(0x6000 <= tag >> 16 < 0x6020 for tag in ds._dict):
        return False  # no overlay group at all: nothing below can be true
    for group in range(0x6000, 0x6020, 2):
        tag = (group << 16) | _OVERLAY_BITS_ALLOCATED
        if tag in ds:
            value = ds[tag].value
            if value is None or value == b"" or value == []:
                continue
            bits = value if isinstance(value, int) else int.from_bytes(bytes(value)[:2], "little")
            if bits != 1:
                return True
        elif (group << 16) | 0x0010 in ds and (group << 16) | 0x3000 not in ds:
            # Overlay rows declared without separate overlay data: the overlay lives in the pixel bits.
            return True
    return False


def pixel_bytes_risk(ds: Dataset, tokens: frozenset[str]) -> str:
    """NOT_AT_RISK, or REASON_BURNED_IN when an identifying string of the instance is in its pixel bytes.

    Needs no decoding; bits set above High Bit are not a reason to reject: `deid_clean` clears them.
    """
    if 0x7FE00010 not in ds:
        return NOT_AT_RISK
    try:
        data = ds[0x7FE00010].value
        if not isinstance(data, bytes | bytearray):
            return REASON_MALFORMED
        if bytes_contain(bytes(data), tokens, MIN_PIXEL_TOKEN):
            return REASON_BURNED_IN
    except Exception:
        return REASON_MALFORMED
    return NOT_AT_RISK
