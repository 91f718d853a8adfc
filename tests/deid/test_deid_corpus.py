"""deidentify_dataset over the real corpus (pydicom's test files and pydicom-data), one test per file.

Each file is either rejected with a `deid.*` code, or its output is written with pydicom, parses back,
adds no dciodvfy error the input did not have, keeps its pixel bytes (unless the engine says it cleaned
them) and says PatientIdentityRemoved YES. Every corpus file runs: the largest is about 7 MB and the
whole module takes a few seconds, so no size rule is needed.
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING

import pytest
from pydicom import dcmread
from pydicom.filewriter import dcmwrite

from dicom_node.dicom.deid import DeidPolicy, DeidRejected, deidentify_dataset
from dicom_node.dicom.deid_keys import DeidKeys
from tests.harness.corpus import EXPECTED_REJECTIONS, CorpusFile, corpus
from tests.harness.dicom_tools import run_tool

if TYPE_CHECKING:
    from pathlib import Path

    from pydicom.dataset import Dataset

KEYS = DeidKeys.from_secret(bytes(range(32)))
POLICY = DeidPolicy()
NOT_AT_RISK = "not_at_risk"
PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)

# PS3.4 B.5: the CT and MR image storage classes (the inputs the node exists for).
CT_MR_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
        "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image
    }
)
# DEID.md 4.4 step 1: CTP's description heuristic for screen captures and dose sheets.
AT_RISK_DESCRIPTION = re.compile(r"SAVE|SCREEN|DOSE|REPORT", re.IGNORECASE)
# dciodvfy says this when it could not read the input to its end; its error list is then incomplete.
READ_FAILED = "read failed"


def read(corpus_file: CorpusFile) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corpus is non-conformant on purpose
        return dcmread(corpus_file.path)


def dciodvfy_errors(path: Path) -> set[str]:
    """dciodvfy's Error lines with element values taken out, so the same defect compares equal."""
    completed = run_tool("dciodvfy", [str(path)], timeout=60)
    errors: set[str] = set()
    for line in (completed.stderr + completed.stdout).splitlines():
        if not line.startswith("Error"):
            continue
        # <...> after Element=, Module= or "attribute" names an attribute or module; any other holds a value.
        line = re.sub(r"(?<!Element=)(?<!Module=)(?<!attribute )<[^>]*>", "<>", line)
        line = re.sub(r'"[^"]*"', '""', line)
        line = re.sub(r"\b\d+(?:\.\d+)+\b", "#", line)  # UIDs and numbers outside brackets
        errors.add(re.sub(r"\s+", " ", line).strip())
    return errors


def known_pixel_risk(ds: Dataset) -> str | None:
    """Why DEID.md 4.4 step 1 puts a CT/MR instance without BurnedInAnnotation YES at risk, or None."""
    image_type = [str(value).upper() for value in ds.get("ImageType") or []]
    if "SECONDARY" in image_type or any("SCREEN SAVE" in value for value in image_type):
        return "ImageType SECONDARY"
    if AT_RISK_DESCRIPTION.search(str(ds.get("SeriesDescription") or "")):
        return "SeriesDescription heuristic"
    for group in range(0x6000, 0x6020, 2):
        bits = ds.get((group << 16) | 0x0100)
        if bits is not None and bits.value not in (None, 1, b"", b"\x01\x00"):
            return "overlay in the pixel bits"
    return None


def decodable(ds: Dataset) -> Dataset:
    """`ds` without the elements pydicom cannot decode (a truncated one), at every depth."""
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
            if element.VR == "SQ":
                for item in element.value:
                    decodable(item)
        except Exception:
            del ds[tag]
    return ds


def pixel_elements(ds: Dataset) -> dict[int, bytes]:
    return {tag: bytes(ds[tag].value) for tag in PIXEL_TAGS if tag in ds}


CORPUS = corpus()


@pytest.mark.parametrize("corpus_file", CORPUS, ids=[f.name for f in CORPUS])
def test_a_corpus_file_is_rejected_with_a_deid_code_or_deidentified_into_a_valid_instance(
    corpus_file: CorpusFile, tmp_path: Path
) -> None:
    ds = read(corpus_file)
    try:
        result = deidentify_dataset(ds, POLICY, KEYS)
    except DeidRejected as rejected:
        assert rejected.code.startswith("deid."), rejected.code
        # Real CT/MR without burned-in text is what the node exists for: a rejection needs a known reason.
        if corpus_file.sop_class_uid in CT_MR_CLASSES:
            burned_in = str(ds.get("BurnedInAnnotation") or "").strip().upper()
            reason = known_pixel_risk(ds) or EXPECTED_REJECTIONS.get(corpus_file.name)
            assert burned_in == "YES" or reason is not None, (
                f"CT/MR without BurnedInAnnotation YES rejected for no known reason: {rejected.code}"
            )
        return
    out_path = tmp_path / "out.dcm"
    dcmwrite(out_path, result.dataset, enforce_file_format=True)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our own output must read back without a complaint
        out = dcmread(out_path)
        for element in out.iterall():
            _ = element.value  # decode every element at every depth
    assert out.get("PatientIdentityRemoved") == "YES"
    assert "SOPClassUID" in out and "SOPInstanceUID" in out, "an instance without its SOP identity"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID

    decision = result.report.pixel_decision
    if decision == NOT_AT_RISK:
        assert pixel_elements(out) == pixel_elements(ds), "pixel data changed although not at risk"
    else:
        assert "clean" in decision, decision
        assert pixel_elements(out), "cleaned pixel data went missing"

    baseline = corpus_file.path
    before = dciodvfy_errors(baseline)
    if any(READ_FAILED in line for line in before):
        # dciodvfy gave up on the input, so its errors say nothing about the rest: compare against what
        # the engine was given, the input as pydicom read and decoded it, written back as it is.
        baseline = tmp_path / "as_read.dcm"
        dcmwrite(baseline, decodable(read(corpus_file)), enforce_file_format=True)
        before = dciodvfy_errors(baseline)
    new_errors = dciodvfy_errors(out_path) - before
    assert not new_errors, sorted(new_errors)


def test_most_of_the_corpus_is_deidentified_rather_than_rejected() -> None:
    """An engine rejecting everything would pass each per-file test; CT/MR inputs must get through."""
    accepted = []
    for corpus_file in CORPUS:
        if corpus_file.sop_class_uid not in CT_MR_CLASSES or corpus_file.name in EXPECTED_REJECTIONS:
            continue
        ds = read(corpus_file)
        if known_pixel_risk(ds) is not None:
            continue
        try:
            deidentify_dataset(ds, POLICY, KEYS)
        except DeidRejected:
            continue
        accepted.append(corpus_file.name)
    assert len(accepted) >= 50, accepted
