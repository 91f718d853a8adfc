"""Kept text written as the input's raw element: the bytes are those of the value encoded again."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.tag import Tag

from dicom_node.dicom.deid import DeidPolicy, deidentify_dataset
from dicom_node.dicom.deid_keys import DeidKeys
from tests.harness.datasets import make_ct

KEYS = DeidKeys.from_secret(bytes(range(32)))


def _encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _read_back(ds: Dataset) -> Dataset:
    """`ds` as a file read from disk: every element raw, in explicit VR little endian."""
    return pydicom.dcmread(io.BytesIO(_encoded(ds)))


def _all_converted(ds: Dataset) -> Dataset:
    copy = Dataset()
    copy.update(ds)
    copy.file_meta = ds.file_meta
    for tag in list(copy.keys()):
        copy[tag]  # converts a raw element in place
    return copy


def test_kept_text_goes_out_raw_with_the_bytes_pydicom_would_write() -> None:
    out = deidentify_dataset(_read_back(make_ct()), DeidPolicy(), KEYS).dataset
    raw_text = [
        element.VR
        for element in out._dict.values()
        if isinstance(element, RawDataElement) and element.VR in ("CS", "DS", "IS", "LO", "SH")
    ]
    assert raw_text  # the path is taken
    assert _encoded(out) == _encoded(_all_converted(out))


@pytest.mark.parametrize(
    ("tag", "vr", "raw"),
    [
        (0x00080060, "CS", b"CT  "),  # two padding spaces: pydicom strips them, writes b"CT"
        (0x00180050, "DS", b" 2.5"),  # a leading space
        (0x00080070, "LO", b"Ven\xe9"),  # not ASCII
        (0x00200013, "IS", b"+7"),
    ],
)
def test_text_whose_bytes_would_change_is_encoded_again(tag: int, vr: str, raw: bytes) -> None:
    source = _read_back(make_ct())
    source[Tag(tag)] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)
    out = deidentify_dataset(source, DeidPolicy(), KEYS).dataset
    assert _encoded(out) == _encoded(_all_converted(out))
    element = out._dict.get(Tag(tag))
    if isinstance(element, RawDataElement):
        assert element.value == raw
