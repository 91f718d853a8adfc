"""Determinism across processes: what one worker de-identifies, another worker must match byte for byte.

Every run goes through `tests.harness.deid_process` in a fresh interpreter (its own hash seed, its own
imports), reading the secret from its file as after a restart. A study split over two workers must still
hang together: references, shared Study and Frame of Reference UIDs, and the real intervals between dates.
"""

from __future__ import annotations

import functools
import io
import warnings
from datetime import datetime
from typing import TYPE_CHECKING

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.uid import CTImageStorage

from dicom_node.dicom.deid import DeidPolicy, DeidRejected, deidentify_dataset
from dicom_node.dicom.deid_keys import DeidKeys, load_or_create_secret
from tests.harness import deid_process
from tests.harness.corpus import corpus
from tests.harness.datasets import make_ct, write

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from pydicom.dataelem import DataElement

# Unregistered roots for the synthetic study; nothing under them is in pydicom's UID dictionary.
ROOT = "1.2.826.0.1.3680043.10.543.88"
PATIENT_ID = "QXDETMRN5501"
# The node's own Implementation Class UID is a 2.25 UID too, but a constant, not a pseudonym.
IMPLEMENTATION_CLASS_UID = 0x00020012


def secret_file(path: Path) -> Path:
    load_or_create_secret(path)
    return path


def walk(ds: Dataset, path: str = "") -> Iterator[tuple[str, DataElement]]:
    for element in ds:
        yield f"{path}{int(element.tag):08X}", element
        if element.VR == "SQ":
            for index, child in enumerate(element.value):
                yield from walk(child, f"{path}{int(element.tag):08X}[{index}].")


def pseudonymous_uids(ds: Dataset) -> dict[str, str]:
    """Every 2.25 UID value by its path (element-wise for multi-valued UIDs), file meta included."""
    found: dict[str, str] = {}
    for prefix, dataset in (("meta.", ds.file_meta), ("", ds)):
        for path, element in walk(dataset, prefix):
            if element.VR != "UI" or not element.value or element.tag == IMPLEMENTATION_CLASS_UID:
                continue
            values = element.value if isinstance(element.value, MultiValue) else [element.value]
            for index, value in enumerate(values):
                if str(value).startswith("2.25."):
                    found[f"{path}/{index}"] = str(value)
    return found


@functools.cache
def accepted_corpus_files(limit: int) -> list[Path]:
    """Real corpus files the engine de-identifies (not rejected), in name order."""
    chosen: list[Path] = []
    keys = DeidKeys.from_secret(bytes(range(32)))
    for corpus_file in corpus():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(corpus_file.path)
        try:
            deidentify_dataset(ds, DeidPolicy(), keys)
        except DeidRejected:
            continue
        chosen.append(corpus_file.path)
        if len(chosen) == limit:
            break
    return chosen


def encoded_here(path: Path, keys: DeidKeys) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path)
    buffer = io.BytesIO()
    dcmwrite(buffer, deidentify_dataset(ds, DeidPolicy(), keys).dataset, enforce_file_format=True)
    return buffer.getvalue()


def test_two_fresh_processes_give_identical_bytes_for_real_corpus_files(tmp_path: Path) -> None:
    """Real files (private blocks, nested sequences, several transfer syntaxes), not only synthetic ones."""
    inputs = accepted_corpus_files(limit=24)
    assert len(inputs) >= 10, inputs
    secret = secret_file(tmp_path / "deid.secret")
    first = deid_process.run(secret, tmp_path / "a", inputs, hash_seed="11")
    second = deid_process.run(secret, tmp_path / "b", inputs, hash_seed="12")
    keys = DeidKeys.from_secret(load_or_create_secret(secret))
    differing = [
        path.name
        for path, a, b in zip(inputs, first, second, strict=True)
        if a.read_bytes() != b.read_bytes() or a.read_bytes() != encoded_here(path, keys)
    ]
    assert not differing, differing


def test_another_secret_gives_other_uids_and_another_patient_pseudonym(tmp_path: Path) -> None:
    inputs = accepted_corpus_files(limit=8)
    first = deid_process.run(secret_file(tmp_path / "one.secret"), tmp_path / "a", inputs, hash_seed="1")
    second = deid_process.run(secret_file(tmp_path / "two.secret"), tmp_path / "b", inputs, hash_seed="1")
    for path, a, b in zip(inputs, first, second, strict=True):
        out_a, out_b = dcmread(a), dcmread(b)
        assert out_a.PatientID != out_b.PatientID, path.name
        uids_a, uids_b = pseudonymous_uids(out_a), pseudonymous_uids(out_b)
        # Same input, same walk: the same places hold pseudonyms, and no place holds the same one.
        assert uids_a.keys() == uids_b.keys(), path.name
        assert "00080018/0" in uids_a, path.name  # the SOP Instance UID at least
        shared = [place for place in uids_a if uids_a[place] == uids_b[place]]
        assert not shared, (path.name, shared)


def ct(series: int, instance: int, *, study: str = "1", study_date: str = "20240105") -> Dataset:
    """One CT instance of the synthetic study: UIDs under ROOT, one patient, one Frame of Reference."""
    ds = make_ct(
        study_uid=f"{ROOT}.{study}",
        series_uid=f"{ROOT}.{study}.{series}",
        sop_instance_uid=f"{ROOT}.{study}.{series}.{instance}",
        instance_number=instance,
        patient_id=PATIENT_ID,
        seed=series * 10 + instance,
    )
    ds.FrameOfReferenceUID = f"{ROOT}.{study}.0"
    ds.SeriesNumber = series
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.AcquisitionDateTime = f"{study_date}101500.250000"
    return ds


def reference(target: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = target.SOPClassUID
    item.ReferencedSOPInstanceUID = target.SOPInstanceUID
    return item


def referencing_series(originals: list[Dataset]) -> list[Dataset]:
    """Series 2 of the study, derived from series 1: each instance points at two of the originals."""
    derived = []
    for number, (first, second) in enumerate(zip(originals, originals[1:] + originals[:1], strict=True)):
        ds = ct(2, number + 1)
        ds.ImageType = ["DERIVED", "PRIMARY", "AXIAL"]
        ds.ReferencedImageSequence = [reference(first)]
        ds.SourceImageSequence = [reference(second)]
        series = Dataset()
        series.SeriesInstanceUID = first.SeriesInstanceUID
        series.ReferencedInstanceSequence = [reference(first), reference(second)]
        ds.ReferencedSeriesSequence = [series]
        derived.append(ds)
    return derived


def test_a_study_split_over_two_processes_keeps_every_reference_and_shared_uid(tmp_path: Path) -> None:
    """Worker A gets series 1, worker B the series that references it; the outputs must still link up."""
    originals = [ct(1, number) for number in (1, 2, 3)]
    derived = referencing_series(originals)
    paths_a = [write(ds, tmp_path / "in" / f"a{index}.dcm") for index, ds in enumerate(originals)]
    paths_b = [write(ds, tmp_path / "in" / f"b{index}.dcm") for index, ds in enumerate(derived)]
    secret = secret_file(tmp_path / "deid.secret")
    out_a = [dcmread(p) for p in deid_process.run(secret, tmp_path / "a", paths_a, hash_seed="3")]
    out_b = [dcmread(p) for p in deid_process.run(secret, tmp_path / "b", paths_b, hash_seed="4")]

    new_uid = {ds.SOPInstanceUID: out.SOPInstanceUID for ds, out in zip(originals, out_a, strict=True)}
    assert len(set(new_uid.values())) == len(originals)
    assert not set(new_uid) & set(new_uid.values()), "SOP Instance UIDs were not remapped"
    every = out_a + out_b
    assert len({out.StudyInstanceUID for out in every}) == 1
    assert len({out.FrameOfReferenceUID for out in every}) == 1
    assert every[0].StudyInstanceUID != originals[0].StudyInstanceUID
    assert every[0].FrameOfReferenceUID != originals[0].FrameOfReferenceUID
    assert len({out.SeriesInstanceUID for out in out_a}) == 1
    assert out_a[0].SeriesInstanceUID != out_b[0].SeriesInstanceUID
    for ds, out in zip(derived, out_b, strict=True):
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert out.SOPInstanceUID not in new_uid.values()
        refs = [
            (out.ReferencedImageSequence[0], ds.ReferencedImageSequence[0]),
            (out.SourceImageSequence[0], ds.SourceImageSequence[0]),
            *zip(
                out.ReferencedSeriesSequence[0].ReferencedInstanceSequence,
                ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence,
                strict=True,
            ),
        ]
        for new, old in refs:
            assert new.ReferencedSOPInstanceUID == new_uid[old.ReferencedSOPInstanceUID]
            assert new.ReferencedSOPClassUID == CTImageStorage
        assert out.ReferencedSeriesSequence[0].SeriesInstanceUID == out_a[0].SeriesInstanceUID


def days_between(earlier: str, later: str) -> int:
    return (datetime.strptime(later[:8], "%Y%m%d") - datetime.strptime(earlier[:8], "%Y%m%d")).days


@pytest.mark.parametrize(("first_date", "second_date"), [("20240105", "20240126"), ("20191231", "20240229")])
def test_two_studies_of_one_patient_in_two_processes_keep_their_real_interval(
    tmp_path: Path, first_date: str, second_date: str
) -> None:
    """Priors link only if both studies move by the patient's one offset, whichever worker ran them."""
    first = write(ct(1, 1, study="7", study_date=first_date), tmp_path / "in" / "first.dcm")
    second = write(ct(1, 1, study="8", study_date=second_date), tmp_path / "in" / "second.dcm")
    secret = secret_file(tmp_path / "deid.secret")
    (out_first,) = (dcmread(p) for p in deid_process.run(secret, tmp_path / "a", [first], hash_seed="5"))
    (out_second,) = (dcmread(p) for p in deid_process.run(secret, tmp_path / "b", [second], hash_seed="6"))

    assert out_first.PatientID == out_second.PatientID
    assert out_first.StudyInstanceUID != out_second.StudyInstanceUID
    real = days_between(first_date, second_date)
    for keyword in ("StudyDate", "SeriesDate", "ContentDate", "AcquisitionDateTime"):
        assert days_between(out_first[keyword].value, out_second[keyword].value) == real, keyword
    offset = days_between(first_date, out_first.StudyDate)
    assert offset == days_between(second_date, out_second.StudyDate) <= -365
    keys = DeidKeys.from_secret(load_or_create_secret(secret))
    assert offset == keys.date_shift_days(DeidPolicy().default_issuer, PATIENT_ID)
    # Times of day and the DT's fraction are kept (DEID.md 4.3): only whole days move.
    assert out_first.AcquisitionDateTime[8:] == "101500.250000"
