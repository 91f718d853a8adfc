"""The real-world interoperability corpus: pydicom's test files and pydicom-data's, as storage instances.

A corpus file is one that `pydicom.data.get_testdata_files()` lists and that is a storage instance a
modality could send: it parses with a file meta, its SOP Class UID is a storage SOP class, it has a
SOP Instance UID, and its transfer syntax is one pydicom knows.

The corpus holds the same instance in several transfer syntaxes (`MR_small*.dcm`, `SC_rgb*.dcm`, ...):
same SOP Instance UID, different bytes. Sent to one node, the second copy would be a duplicate (kept
or replaced by policy), not a store of its own. So the corpus is split into *rounds*: round *k* holds
the *k*-th file (by name) of every SOP Instance UID, and each round goes to its own fresh node and
database. Within a round no SOP Instance UID repeats.

Some corpus files are broken or non-conformant on purpose. `EXPECTED_REJECTIONS` names each one the
node must refuse, with the error code (the primary one, carried in ErrorComment) and why; every
reason was checked against the file itself. Any other rejection is a bug in the node.
"""

from __future__ import annotations

import functools
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import StoragePresentationContexts

from dicom_node.dicom.validation import Code

STORAGE_SOP_CLASSES = frozenset(str(cx.abstract_syntax) for cx in StoragePresentationContexts)
_TRANSFER_SYNTAXES = frozenset(str(uid) for uid in AllTransferSyntaxes)

# Corpus file name (path below its package's data directory) → the primary error code the node must
# answer with. Each reason was verified by reading the file.
EXPECTED_REJECTIONS: dict[str, str] = {
    # SOPInstanceUID, StudyInstanceUID and SeriesInstanceUID are 64-digit hex strings, not UIDs
    # (PS3.5 9.1 allows digits and dots only); the file meta's UIDs are fine.
    "bad_sequence.dcm": Code.UID_INVALID,
    # Encapsulated PixelData of undefined length whose last fragment ends exactly at the end of the
    # file: the Sequence Delimitation Item (FFFE,E0DD) is missing, so the data set is cut off (pydicom
    # warns "End of file reached before delimiter (FFFE,E0DD) found" and reads back no elements).
    "emri_small_jpeg_2k_lossless_too_short.dcm": Code.TRUNCATED,
    # NumberOfFrames is "1A", not an IS, so the native pixel data length cannot be checked; and the
    # 6000-byte PixelData is 15 frames of 10x10x32 bits, not the one frame an IS of 1 would give.
    "badVR.dcm": Code.PIXEL_DATA_LENGTH_MISMATCH,
    # Secondary Capture without Modality (0008,0060), Type 1 in General Series (PS3.3 C.7.3.1).
    "GDCMJ2K_TextGBR.dcm": Code.TYPE1_MISSING,
    # No StudyInstanceUID, SeriesInstanceUID or Modality at all (pixel-codec test fixtures).
    "JPEGLSNearLossless_08.dcm": Code.TYPE1_MISSING,
    "JPEGLSNearLossless_16.dcm": Code.TYPE1_MISSING,
    # Native PixelData is 8320 bytes; 64 x 64 x 16 bits is 8192: 128 bytes of padding inside the value.
    "MR_small_padded.dcm": Code.PIXEL_DATA_LENGTH_MISMATCH,
    # PixelData claims 8192 bytes at offset 1500 of a 9630-byte file: cut off in the last element.
    "MR_truncated.dcm": Code.TRUNCATED,
    # The last element (300A,00B0) claims 976 bytes at offset 1418 of a 2129-byte file.
    "rtplan_truncated.dcm": Code.TRUNCATED,
    # Secondary Capture without Modality (0008,0060).
    "SC_jpeg_no_color_transform.dcm": Code.TYPE1_MISSING,
    "SC_jpeg_no_color_transform_2.dcm": Code.TYPE1_MISSING,
    "SC_rgb_jpeg_app14_dcmd.dcm": Code.TYPE1_MISSING,
    # No StudyInstanceUID, SeriesInstanceUID or Modality.
    "SC_rgb_jls_lossy_line.dcm": Code.TYPE1_MISSING,
    "SC_rgb_jls_lossy_sample.dcm": Code.TYPE1_MISSING,
}

# Files storescu (DCMTK 3.6) does not send, so only pynetdicom sends them; verified with `storescu -v`.
STORESCU_UNREADABLE: dict[str, str] = {
    "MR_truncated.dcm": "element longer than the rest of the file: 'Bad DICOM file'",
    "rtplan_truncated.dcm": "element longer than the rest of the file: 'Bad DICOM file'",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "no sequence delimiter before the end of the file",
    # Every element is VR UN (legal in explicit VR), and DCMTK does not look inside UN for the UIDs.
    "explicit_VR-UN.dcm": "'missing SOP class (or instance) in file'",
    "rtdose_rle.dcm": "'missing SOP class (or instance) in file'",
    "rtdose_rle_1frame.dcm": "'missing SOP class (or instance) in file'",
    # The data set is Implicit VR although its transfer syntax (JPEG Baseline) is explicit; pydicom
    # detects that and reads it, DCMTK parses garbage ('missing SOP class (or instance)').
    "SC_rgb_jpeg.dcm": "'missing SOP class (or instance) in file'",
}

# storescu proposes uncompressed syntaxes unless told otherwise: the option that makes it propose a
# compressed (or deflated) file's own transfer syntax, so the file is sent without re-encoding.
STORESCU_PROPOSE: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2": (),
    "1.2.840.10008.1.2.1": (),
    "1.2.840.10008.1.2.2": (),  # converted to Explicit VR Little Endian by storescu
    "1.2.840.10008.1.2.1.99": ("-xd",),
    "1.2.840.10008.1.2.4.50": ("-xy",),
    "1.2.840.10008.1.2.4.51": ("-xx",),
    "1.2.840.10008.1.2.4.70": ("-xs",),
    "1.2.840.10008.1.2.4.80": ("-xt",),
    "1.2.840.10008.1.2.4.81": ("-xu",),
    "1.2.840.10008.1.2.4.90": ("-xv",),
    "1.2.840.10008.1.2.4.91": ("-xw",),
    "1.2.840.10008.1.2.5": ("-xr",),
}


@dataclass(frozen=True, slots=True)
class CorpusFile:
    path: Path
    name: str  # below its package's data directory, e.g. "MR_small.dcm" or "dicomdirtests/.../6154"
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    # The file meta's Media Storage SOP Class/Instance UIDs agree with the data set's: a sender that
    # takes them from the file meta (pynetdicom sending a path) announces the right instance.
    meta_agrees: bool
    dataset_offset: int  # where the data set starts, after the file meta

    @property
    def expected_code(self) -> str | None:
        return EXPECTED_REJECTIONS.get(self.name)

    @property
    def encapsulated(self) -> bool:
        return UID(self.transfer_syntax_uid).is_encapsulated

    def dataset_bytes(self) -> bytes:
        """The encoded data set as a sender of the file transmits it: everything after the file meta."""
        return self.path.read_bytes()[self.dataset_offset :]


def _name(path: Path) -> str:
    for parent in path.parents:
        if parent.name in ("test_files", "data") and parent.parent.name in ("data", "data_store"):
            return path.relative_to(parent).as_posix()
    return path.name


def _load(path: Path) -> CorpusFile | None:
    if not path.is_file():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corpus is non-conformant on purpose
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, KeyError, TypeError, EOFError, IndexError):
            return None
        meta = ds.get("file_meta")
        if not meta or "TransferSyntaxUID" not in meta:
            return None
        sop_class = str(ds.get("SOPClassUID", "") or "")
        sop_instance = str(ds.get("SOPInstanceUID", "") or "")
        transfer_syntax = str(meta.TransferSyntaxUID)
        if (
            sop_class not in STORAGE_SOP_CLASSES
            or not sop_instance
            or transfer_syntax not in _TRANSFER_SYNTAXES
        ):
            return None
        file_meta, offset = split_dataset(path)
    return CorpusFile(
        path=path,
        name=_name(path),
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax_uid=transfer_syntax,
        meta_agrees=(
            str(file_meta.get("MediaStorageSOPClassUID", "")) == sop_class
            and str(file_meta.get("MediaStorageSOPInstanceUID", "")) == sop_instance
        ),
        dataset_offset=offset,
    )


@functools.cache
def corpus() -> tuple[CorpusFile, ...]:
    files = [f for f in (_load(Path(p)) for p in sorted(get_testdata_files())) if f is not None]
    names = [f.name for f in files]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuntimeError(f"corpus names are not unique: {duplicates}")
    unknown = sorted(set(EXPECTED_REJECTIONS) - set(names))
    if unknown:
        raise RuntimeError(f"EXPECTED_REJECTIONS names files that are not in the corpus: {unknown}")
    return tuple(sorted(files, key=lambda f: f.name))


@functools.cache
def rounds() -> tuple[tuple[CorpusFile, ...], ...]:
    """The corpus split so that no round holds a SOP Instance UID twice; every file is in one round."""
    by_instance: dict[str, list[CorpusFile]] = defaultdict(list)
    for corpus_file in corpus():
        by_instance[corpus_file.sop_instance_uid].append(corpus_file)
    count = max(len(copies) for copies in by_instance.values())
    return tuple(tuple(copies[k] for copies in by_instance.values() if k < len(copies)) for k in range(count))
