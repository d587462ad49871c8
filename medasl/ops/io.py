"""std.io: readers, folder datasets, the synthetic phantom and writers (stdlib/io.medas).

Each public function implements the operator of the same name; the executor binds them
by name (see `OPERATORS`) and calls them with keyword arguments named as in the
signature, units already converted by the checker (lengths in mm as floats).

Conventions every reader here keeps, and why:

- All image I/O and geometry go through SimpleITK, so a volume read here has exactly
  the values and geometry `sitk.ReadImage` gives (DICOM series via GDCM, sorted along
  the slice normal, rescale slope/intercept applied, so CT is in HU). pydicom is used
  only where SimpleITK cannot answer: telling a DICOM file without an image (DICOMDIR)
  from a corrupt one.
- Problems in the data raise `DataError` (medasl/runtime/errors.py) naming the file;
  a raw SimpleITK exception never escapes, because the user did nothing wrong in Python.
- Readers return the modality the file states (DICOM's Modality tag) or `Any`; the
  executor replaces it with the modality the pipeline declares (`as Image[3, CT]`).
- Some failures SimpleITK does not report are checked here: a truncated NIfTI reads
  without error in SimpleITK 2.5 (the missing voxels come back as zeros), a truncated
  DICOM slice silently drops out of its series, and a series with a missing slice or a
  mix of orientations is read with wrong geometry and only a warning.
- Every floating-point array is checked for NaN and infinite values (E1008) at load,
  where the file can still be named, rather than in the first operator that trips.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import math
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

import numpy as np

from medasl.ops import deferred
from medasl.runtime import outputs
from medasl.runtime.errors import DataError
from medasl.runtime.values import LABEL_KINDS, Annotations, Boxes, Case, CaseSpec, DicomSeries, Pair, Volume

if TYPE_CHECKING:
    import SimpleITK as sitk  # noqa: N813 (the alias SimpleITK documents)
else:  # listing a source's cases, all a cached run asks of this module, needs no SimpleITK
    sitk = deferred("SimpleITK")

PathLike = str | os.PathLike[str]

# DICOM Modality (0008,0060) -> the language's modality names (medasl/ir/types.py).
DICOM_MODALITIES = {"CT": "CT", "MR": "MR", "PT": "PET", "CR": "XR", "DX": "XR", "DR": "XR", "RG": "XR",
                    "MG": "XR", "US": "US", "SM": "Path"}

_MAX_LISTED = 10  # files named in one message before "and N more"


# ===== shared helpers =====================================================================


def _existing_file(path: PathLike) -> Path:
    """`path` as a Path, or E1001 when it does not exist or is a folder."""
    p = Path(path)
    if not p.exists():
        raise DataError("E1001", f"file not found: {p}", p, help=_missing_help(p))
    if p.is_dir():
        raise DataError("E1001", f"{p} is a folder, but a file is expected here", p)
    return p


def _existing_dir(path: PathLike) -> Path:
    """`path` as a Path, or E1001 when it does not exist or is not a folder."""
    p = Path(path)
    if not p.exists():
        raise DataError("E1001", f"folder not found: {p}", p, help=_missing_help(p))
    if not p.is_dir():
        raise DataError("E1001", f"{p} is a file, but a folder is expected here", p)
    return p


def _missing_help(p: Path) -> str:
    """Point at the nearest existing parent: usually the typo is in the part after it."""
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    where = f"`{parent}` exists" if str(parent) not in ("", ".") else "the path is relative"
    return f"{where}; paths are relative to the directory medasc runs in ({Path.cwd()})"


def _reason(exc: BaseException) -> str:
    """The informative line of an ITK exception (its last non-empty line, without the
    source location prefix), so that messages say what failed and not where in ITK."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    text = re.sub(r"^(ITK ERROR|sitk::ERROR):\s*", "", text)
    text = re.sub(r"^\w+\(0x[0-9a-f]+\):\s*", "", text)
    return text


@contextlib.contextmanager
def _itk_quiet() -> Iterator[None]:
    """Silence ITK warnings for a block whose warnings we turn into errors or that are
    noise (GDCM says "No Series were found" for every folder without DICOM files)."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _read_with(path: Path, io_name: str, what: str) -> sitk.Image:
    """Read `path` with one ImageIO (never guessed from the content, so `nifti("x.png")`
    is an error rather than a PNG), turning any failure into E1002."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(io_name)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise DataError("E1002", f"cannot read {path} as {what}: {_reason(exc)}", path,
                        help="the file may be corrupt, truncated, or in another format than its name says") from exc


def _check_finite(vol: Volume) -> Volume:
    """E1008 when a floating-point volume holds NaN or infinite values."""
    a = vol.array
    if a.dtype.kind not in "fc":
        return vol
    finite = np.isfinite(a)
    if finite.all():
        return vol
    bad = int(a.size - np.count_nonzero(finite))
    nan = int(np.count_nonzero(np.isnan(a)))
    first = np.unravel_index(int(np.argmin(finite)), a.shape)
    spatial = tuple(int(i) for i in reversed(first[: vol.dim]))
    where = vol.source or "the image"
    raise DataError("E1008", f"{where}: {bad} of {a.size} values are not finite ({nan} NaN, {bad - nan} infinite); "
                    f"the first at voxel (x, y, z) = {spatial}", vol.source,
                    help="fix or regenerate the file; a NaN would spread through every later operator")


def _identity(dim: int) -> tuple[float, ...]:
    return tuple(float(i == j) for i in range(dim) for j in range(dim))


def _plain_geometry(array: np.ndarray, dim: int, kind: str, source: str) -> Volume:
    """A Volume with 1 mm pixels at the origin: for formats without real geometry."""
    return Volume(array, (1.0,) * dim, (0.0,) * dim, _identity(dim), kind, "Any", source)


# ===== NIfTI completeness ===================================================================


class _NiftiLayout(NamedTuple):
    """Where a NIfTI file's voxels are and how they are stored."""

    offset: int  # byte offset of the voxels in the data file
    nbytes: int  # bytes of voxel data the header promises
    single: bool  # one .nii file (else a .hdr/.img pair)
    datatype: int  # NIfTI datatype code (16 float32, 64 float64, ...)
    endian: str  # "<" or ">"
    dims: tuple[int, ...]  # sizes, fastest axis first


_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _nifti_layout(head: bytes) -> _NiftiLayout | None:
    """The voxel layout from a NIfTI-1 or -2 header, or None when `head` is not one
    (then SimpleITK reports what it is)."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            magic = head[344:348]
            if magic not in (b"n+1\0", b"ni1\0"):
                return None
            dims: tuple[int, ...] = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            offset = struct.unpack(endian + "f", head[108:112])[0]
            single = magic == b"n+1\0"
        elif len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            magic = head[4:8]
            if magic not in (b"n+2\0", b"ni2\0"):
                return None
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            single = magic == b"n+2\0"
        else:
            continue
        ndim = dims[0]
        if not 1 <= ndim <= 7 or bitpix <= 0 or not math.isfinite(offset) or offset < 0:
            return None
        sizes = tuple(int(d) for d in dims[1 : ndim + 1])
        if min(sizes) <= 0:
            return None
        return _NiftiLayout(int(offset), math.prod(sizes) * bitpix // 8, single, int(datatype), endian, sizes)
    return None


def _gzip_length(path: Path, expected: int) -> tuple[int, str | None]:
    """How many bytes `path` decompresses to (at least `expected` when it is complete),
    and the decompression error if there was one.

    Fast path: a gzip stream ends with its length modulo 2**32, which a truncated file
    does not have (its last four bytes are compressed data; a false match has
    probability 2**-32). Only when that length disagrees is the stream decompressed.
    """
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() >= 18:
            f.seek(-4, os.SEEK_END)
            if struct.unpack("<I", f.read(4))[0] == expected % (1 << 32):
                return expected, None
    return _gunzip_count(path)


def _gunzip_count(path: Path) -> tuple[int, str | None]:
    """Decompress `path` (one or more gzip members) counting the bytes, without keeping
    them; returns the count and why decompression stopped early, if it did. zlib is
    driven directly so that the count is exact up to the point of a truncation."""
    total = 0
    member = zlib.decompressobj(wbits=31)
    started = False
    try:
        with open(path, "rb") as f:
            pending = b""
            while True:
                if not pending:
                    pending = f.read(1 << 20)
                    if not pending:
                        break
                started = True
                total += len(member.decompress(pending, 1 << 24))
                pending = member.unconsumed_tail
                if member.eof:
                    rest = member.unused_data + pending + f.read()
                    if not rest.strip(b"\0"):  # zero padding after the last member
                        return total, None
                    member, pending, started = zlib.decompressobj(wbits=31), rest, False
    except zlib.error as exc:
        return total, f"corrupt compressed data: {exc}"
    if started and not member.eof:
        return total, "the compressed data ends early"
    return total, None


def _open_maybe_gz(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")  # noqa: SIM115


def _check_nifti(path: Path) -> None:
    """What SimpleITK does not check in a NIfTI file: E1002 when it holds fewer voxel
    bytes than its header promises, E1008 when a float file holds NaN or infinity.

    SimpleITK (2.5) reads a truncated .nii or .nii.gz without complaint and fills the
    missing voxels with zeros; and its NIfTI library replaces NaN and infinite values by
    0 on reading, so a broken float image would come back looking clean. Both would
    silently corrupt every result downstream, so the raw bytes are checked here.
    """
    try:
        with _open_maybe_gz(path) as f:
            head = f.read(540)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError("E1002", f"cannot read {path} as NIfTI: {exc}", path,
                        help="the file may be corrupt or truncated") from exc
    layout = _nifti_layout(head)
    if layout is None:
        return
    data = path
    if not layout.single:  # a .hdr/.img pair: the voxels are in the .img file
        name = path.name
        stem = name[: -len(".hdr.gz")] if name.lower().endswith(".hdr.gz") else name[: -len(".hdr")]
        candidates = [path.with_name(stem + ".img"), path.with_name(stem + ".img.gz")]
        data = next((c for c in candidates if c.exists()), candidates[0])
        if not data.exists():
            raise DataError("E1001", f"the voxel file of {path} is missing: {data}", data)
    expected = layout.offset + layout.nbytes
    if data.name.lower().endswith(".gz"):
        got, error = _gzip_length(data, expected)
    else:
        got, error = data.stat().st_size, None
    if got < expected:
        detail = f" ({error})" if error else ""
        raise DataError("E1002", f"{data} is truncated: it holds {max(got - layout.offset, 0)} of the "
                        f"{layout.nbytes} bytes of voxel data its header promises{detail}", data,
                        help="the file was cut short (an interrupted copy or download); copy it again")
    if layout.datatype in _NIFTI_FLOATS:
        _check_nifti_finite(data, layout)


def _check_nifti_finite(data: Path, layout: _NiftiLayout) -> None:
    """E1008 when the raw float voxels hold NaN or infinity (read in chunks, so memory
    stays bounded whatever the image size)."""
    dtype = np.dtype(layout.endian + _NIFTI_FLOATS[layout.datatype])
    chunk_values = (1 << 24) // dtype.itemsize
    bad = nan = 0
    first = -1
    seen = 0
    with _open_maybe_gz(data) as f:
        f.seek(layout.offset)
        remaining = layout.nbytes // dtype.itemsize
        while remaining > 0:
            n = min(chunk_values, remaining)
            values = np.frombuffer(f.read(n * dtype.itemsize), dtype=dtype)
            finite = np.isfinite(values)
            if not finite.all():
                if first < 0:
                    first = seen + int(np.argmin(finite))
                bad += int(values.size - np.count_nonzero(finite))
                nan += int(np.count_nonzero(np.isnan(values)))
            seen += values.size
            remaining -= n
    if bad:
        where = np.unravel_index(first, tuple(reversed(layout.dims)))
        voxel = tuple(int(i) for i in reversed(where))[:3]
        raise DataError("E1008", f"{data}: {bad} of {seen} values are not finite ({nan} NaN, {bad - nan} infinite); "
                        f"the first at voxel (x, y, z) = {voxel}", data,
                        help="fix or regenerate the file (SimpleITK would silently read these values as 0)")


# ===== single images ========================================================================


def _read_volume(path: PathLike, io_name: str, what: str, kind: str = "image") -> Volume:
    """Read one file with `io_name` into a checked Volume."""
    p = _existing_file(path)
    if io_name == "NiftiImageIO":
        _check_nifti(p)
    elif io_name == "MetaImageIO":
        _check_meta_data_file(p)
    img = _read_with(p, io_name, what)
    return _check_finite(Volume.from_sitk(img, kind, "Any", str(p)))


def _check_meta_data_file(path: Path) -> None:
    """E1001 naming the raw file when an .mhd header points to one that is missing
    (SimpleITK's own message for this is "No such file or directory" without a name)."""
    if not path.name.lower().endswith(".mhd"):
        return
    with open(path, "rb") as f:
        for raw in f.read(65536).splitlines():
            key, _, value = raw.decode("latin-1").partition("=")
            if key.strip() == "ElementDataFile":
                name = value.strip()
                if name and name.upper() not in ("LOCAL", "LIST") and "%" not in name:
                    data = path.parent / name
                    if not data.exists():
                        raise DataError("E1001", f"the voxel file of {path} is missing: {data}", data)
                return


def nifti(path: PathLike) -> Volume:
    """Read a NIfTI image (.nii, .nii.gz, or a .hdr/.img pair), geometry as SimpleITK gives it."""
    return _read_volume(path, "NiftiImageIO", "NIfTI")


def nrrd(path: PathLike) -> Volume:
    """Read an NRRD image (.nrrd, .nhdr)."""
    return _read_volume(path, "NrrdImageIO", "NRRD")


def mha(path: PathLike) -> Volume:
    """Read a MetaImage (.mha, or an .mhd header with its raw file): the LUNA16 format."""
    return _read_volume(path, "MetaImageIO", "MetaImage")


def _flat_picture(path: PathLike, io_name: str, what: str, kind: str, drop_alpha: bool) -> Volume:
    """A 2-D picture (PNG, JPEG): alpha dropped, 1 mm pixels at the origin.

    The geometry is set rather than read because these formats' resolution fields
    (PNG pHYs) hold screen DPI from image editors, which as millimetres would be
    meaningless; the stdlib documents 1 mm per pixel.
    """
    p = _existing_file(path)
    img = _read_with(p, io_name, what)
    array = sitk.GetArrayFromImage(img)
    if img.GetDimension() == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and drop_alpha and array.shape[-1] in (2, 4):
        array = array[..., :-1]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return _check_finite(_plain_geometry(np.ascontiguousarray(array), 2, kind, str(p)))


def png(path: PathLike) -> Volume:
    """Read a PNG: grey (8 or 16 bit, dtype kept), RGB, or RGBA with alpha dropped.
    Spacing 1 mm per pixel, origin 0, identity direction."""
    return _flat_picture(path, "PNGImageIO", "PNG", "image", drop_alpha=True)


def jpeg(path: PathLike) -> Volume:
    """Read a JPEG (grey or RGB); spacing 1 mm per pixel."""
    return _flat_picture(path, "JPEGImageIO", "JPEG", "image", drop_alpha=True)


def tiff(path: PathLike) -> Volume:
    """Read a 2-D TIFF (a pathology tile, a microscopy field).

    Spacing comes from the resolution tags as SimpleITK reads them (1 mm without them);
    a single-page file comes back 2-D, channels as stored (alpha kept: in microscopy a
    fourth channel may be data).
    """
    p = _existing_file(path)
    img = _read_with(p, "TIFFImageIO", "TIFF")
    if img.GetDimension() == 3 and img.GetSize()[2] == 1:
        img = img[:, :, 0]
    return _check_finite(Volume.from_sitk(img, "image", "Any", str(p)))


def numpy(path: PathLike, key: str | None = None) -> Volume:
    """Read a NumPy array (.npy, or the array `key` of an .npz; its only array without
    `key`) as an image.

    Spacing 1 mm, identity direction; a last axis of length 3 or 4 is channels. Loaded
    with `allow_pickle=False`: an object array is refused, never unpickled. An .npz of
    several arrays without `key` is E1043 listing them (a stack of images and labels is
    read with `stacked_classified` or `stacked_labels`).
    """
    p = _existing_file(path)
    try:
        loaded = np.load(p, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            array = loaded
        else:  # an .npz archive, whatever the file is called
            with loaded:
                if not loaded.files:
                    raise DataError("E1002", f"{p} holds no arrays", p)
                if key is None and len(loaded.files) > 1:
                    raise DataError("E1043", f"{p} holds {len(loaded.files)} arrays ({', '.join(loaded.files)}); "
                                    "say which with `key=`", p,
                                    help="an image stack with its labels is a dataset: `stacked_classified(...)`")
                if key is not None and key not in loaded.files:
                    raise DataError("E1043", f"{p} has no array {key!r}; its arrays are {', '.join(loaded.files)}", p)
                array = loaded[key if key is not None else loaded.files[0]]
    except DataError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError("E1002", f"cannot read {p} as a NumPy array: {exc}", p,
                        help="the file may be corrupt or truncated; object arrays are never loaded") from exc
    if array.dtype.kind not in "biuf":
        raise DataError("E1002", f"{p} holds {array.dtype} values, not numbers an image can hold", p)
    channels = array.ndim >= 3 and array.shape[-1] in (3, 4)
    dim = array.ndim - 1 if channels else array.ndim
    if dim not in (2, 3):
        raise DataError("E1002", f"{p} holds an array of shape {array.shape}, not a 2-D or 3-D image", p)
    return _check_finite(_plain_geometry(np.ascontiguousarray(array), dim, "image", str(p)))


# ===== DICOM ================================================================================


def _has_dicm_prefix(path: Path) -> bool:
    """Whether the file has the DICOM Part 10 preamble and `DICM` prefix."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _dicom_failure(path: Path) -> DataError:
    """The error for a file GDCM could not read: E1003 when it is not a DICOM image (no
    DICOM prefix, or a DICOM object without pixel data such as a DICOMDIR), E1002 when
    it is a DICOM image that cannot be decoded (corrupt, truncated, unsupported coding).

    GDCM reports all of these alike ("Unable to determine ImageIO reader"), so pydicom
    reads the header to tell them apart.
    """
    if not _has_dicm_prefix(path):
        return DataError("E1003", f"{path} is not a DICOM file", path,
                         help="use `nifti`, `png`, ... for other formats; a DICOM file starts with a 128-byte "
                              "preamble and `DICM`")
    import pydicom  # only on this error path

    try:
        ds = pydicom.dcmread(path, defer_size=1024)
        has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
        kind = str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "")) if hasattr(ds, "file_meta") else ""
        with contextlib.suppress(Exception):
            kind = ds.file_meta.MediaStorageSOPClassUID.name
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        with contextlib.suppress(Exception):
            syntax = ds.file_meta.TransferSyntaxUID.name
    except Exception as exc:  # pydicom raises many types for damaged files
        return DataError("E1002", f"{path} is a damaged DICOM file: {exc}", path,
                         help="the file may be truncated or corrupt; copy it again from the source")
    if not has_pixels:
        return DataError("E1003", f"{path} is a DICOM file without an image ({kind or 'no pixel data'})", path,
                         help="point the reader at the image files, not at a DICOMDIR or report")
    detail = ""
    with contextlib.suppress(Exception):
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        expected = rows * cols * frames * samples * int(ds.BitsAllocated) // 8
        got = len(ds.PixelData)
        if not ds.file_meta.TransferSyntaxUID.is_compressed and got < expected:
            detail = f": truncated, {got} of {expected} bytes of pixel data"
    return DataError("E1002", f"cannot decode the image in DICOM file {path}{detail or f' ({syntax})'}", path,
                     help="the file may be truncated or corrupt, or use a compression GDCM cannot decode")


def _meta(reader: sitk.ImageFileReader, key: str) -> str:
    """A DICOM tag of a file as GDCM gives it (stripped), or '' when absent."""
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _slice_meta(reader: sitk.ImageSeriesReader, index: int, key: str) -> str:
    """A DICOM tag of slice `index` of a series, or '' when absent."""
    return reader.GetMetaData(index, key).strip() if reader.HasMetaDataKey(index, key) else ""


def dicom_file(path: PathLike) -> Volume:
    """Read a single DICOM file (a radiograph, one slice, or a multi-frame object).

    Values and geometry are `sitk.ReadImage`'s: rescale slope and intercept are applied
    (CT in HU, widened to a type that holds them), geometry from the Image Plane module.
    A single frame (a radiograph, one slice) is a 2-D image with the frame's in-plane
    spacing, origin and orientation: SimpleITK gives it as a volume one slice thick,
    which 2-D operators and networks would refuse. MONOCHROME1 images (where higher
    values are darker, common in CR/DX X-rays) are inverted by GDCM on reading, so that
    higher values are brighter in every image: an unsigned value v becomes
    2^BitsStored - 1 - v, a signed one -v - 1. A segmentation (DICOM SEG) is read by
    `dicom_seg` as a label map, not as the stack of its frames.
    """
    p = _existing_file(path)
    if _sop_class(p) in _SEG_SOP_CLASSES:
        return dicom_seg(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    reader.SetImageIO("GDCMImageIO")
    try:
        img = reader.Execute()
    except RuntimeError:
        raise _dicom_failure(p) from None
    modality = DICOM_MODALITIES.get(_meta(reader, "0008|0060"), "Any")
    if img.GetDimension() == 3 and img.GetSize()[2] == 1:
        img = _single_frame(img)
    return _check_finite(Volume.from_sitk(img, "image", modality, str(p)))


def _single_frame(img: sitk.Image) -> sitk.Image:
    """The one frame of a volume one slice thick as a 2-D image. Its in-plane axes keep
    their orientation when they lie in a world-axis plane (the direction's sub-matrix);
    an oblique frame gets the identity in-plane direction, since a 2-D image cannot
    express a tilt out of its plane (spacing and values are kept either way)."""
    extract = sitk.ExtractImageFilter()
    extract.SetSize([img.GetSize()[0], img.GetSize()[1], 0])
    extract.SetIndex([0, 0, 0])
    extract.SetDirectionCollapseToStrategy(sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
    try:
        return extract.Execute(img)
    except RuntimeError:  # the in-plane sub-matrix is not a rotation (an oblique frame)
        extract.SetDirectionCollapseToStrategy(sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOIDENTITY)
        return extract.Execute(img)


_SEG_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
                    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage"}


def _sop_class(path: Path) -> str:
    """The SOP Class UID of a DICOM file (from its file meta, else the dataset), read
    with pydicom from the header only; '' for a file that is not DICOM."""
    if not _has_dicm_prefix(path):
        return ""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # pydicom raises many types for damaged files: GDCM then reports them
        return ""
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", "") or "")


def dicom_seg(path: PathLike) -> Volume:
    """Read a DICOM Segmentation (SEG) object as a label map, with highdicom.

    Binary and Label Map SEGs: each segment becomes the label value of its segment
    number (1, 2, ...), background 0, on the grid the frames describe (x along the rows,
    y down the columns, z along the slice normal, as SimpleITK orders a series); the
    segment labels are the label map's class names (`names`). Overlapping segments,
    fractional (probability) segmentations and frames not on a regular grid are E1042.
    """
    p = _existing_file(path)
    if _sop_class(p) not in _SEG_SOP_CLASSES:
        if not _has_dicm_prefix(p):
            raise DataError("E1003", f"{p} is not a DICOM file", p, help="`dicom_seg` reads DICOM SEG objects")
        raise DataError("E1042", f"{p} is a DICOM file but not a segmentation (SEG)", p,
                        help="read images with `dicom_file` or `dicom_series`")
    import highdicom as hd

    try:
        seg = hd.seg.segread(p)
    except Exception as exc:  # highdicom and pydicom raise many types for damaged objects
        raise DataError("E1002", f"cannot read the DICOM SEG {p}: {exc}", p,
                        help="the file may be truncated or corrupt; copy it again from the source") from exc
    if seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL:
        raise DataError("E1042", f"{p} is a FRACTIONAL segmentation (probabilities per segment), not a label map", p,
                        help="threshold it where it was made, or export it as a BINARY or LABELMAP SEG")
    numbers = [int(n) for n in seg.segment_numbers]
    try:
        volume = seg.get_volume(combine_segments=True, relabel=False, dtype=np.uint16 if max(numbers, default=0) > 255
                                else np.uint8)
    except (ValueError, RuntimeError) as exc:
        raise DataError("E1042", f"cannot build a label map from the DICOM SEG {p}: {exc}", p,
                        help="overlapping segments cannot share one label map, and the frames must lie on "
                             "a regular grid") from exc
    names = tuple((n, str(seg.get_segment_description(n).segment_label)) for n in numbers)
    img = _seg_image(np.asarray(volume.array), np.asarray(volume.affine, dtype=float))
    if img.GetDimension() == 3 and img.GetSize()[2] == 1:
        img = _single_frame(img)
    return Volume.from_sitk(img, "labels", "Any", str(p)).with_names(names)


def _seg_image(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A highdicom volume (array indexed slice, row, column; `affine` from those indices
    to LPS mm) as a SimpleITK image with x along a row, y down the columns and z along
    the slice normal (the order ImageSeriesReader gives the source series in): the
    slices are reversed when highdicom stacked them against the normal."""
    column_step, row_step, slice_step = affine[:3, 2], affine[:3, 1], affine[:3, 0]
    spacing = [float(np.linalg.norm(v)) or 1.0 for v in (column_step, row_step, slice_step)]
    x_dir, y_dir, z_dir = (v / n for v, n in zip((column_step, row_step, slice_step), spacing))
    origin = affine[:3, 3]
    if array.shape[0] == 1:  # one frame: its thickness is no direction; the normal of its plane is
        z_dir = np.cross(x_dir, y_dir)
    elif float(np.dot(np.cross(x_dir, y_dir), z_dir)) < 0:
        array = array[::-1]
        origin = origin + slice_step * (array.shape[0] - 1)
        z_dir = -z_dir
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing(spacing)
    img.SetOrigin([float(v) for v in origin])
    img.SetDirection([float(v) for v in np.column_stack([x_dir, y_dir, z_dir]).ravel()])
    return img


def _find_series(root: Path) -> dict[str, list[str]]:
    """Every DICOM series under `root` (recursively): SeriesInstanceUID -> files sorted
    by GDCM (along the slice normal). A series spread over several folders is sorted
    as a whole."""
    found: dict[str, list[str]] = {}
    spread: set[str] = set()
    with _itk_quiet():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if not filenames:
                continue
            for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(dirpath):
                files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(dirpath, uid, False, False, False))
                if uid in found:
                    spread.add(uid)
                    found[uid].extend(files)
                else:
                    found[uid] = files
        for uid in spread:
            found[uid] = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(root), uid, False, True, False))
    return found


def _unreadable_dicom(root: Path, claimed: set[str]) -> list[Path]:
    """DICOM image files under `root` that GDCM left out of every series.

    A truncated slice is not recognised by GDCM and would silently be missing from its
    series; files with the DICOM prefix that no series claims are checked, and those
    that are images (not a DICOMDIR or header-only object) are returned.
    """
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            f = Path(dirpath) / name
            if str(f) in claimed or os.path.normpath(f) in claimed or not _has_dicm_prefix(f):
                continue
            if _dicom_failure(f).code == "E1002":
                bad.append(f)
    return bad


def _series_info(uid: str, files: Sequence[str], root: Path) -> DicomSeries:
    """A DicomSeries with the description and modality of its first file's header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    reader.SetImageIO("GDCMImageIO")
    description = modality = ""
    with contextlib.suppress(RuntimeError):
        reader.ReadImageInformation()
        description = _meta(reader, "0008|103e")
        modality = _meta(reader, "0008|0060")
    return DicomSeries(uid, tuple(files), description, DICOM_MODALITIES.get(modality, "Any"), str(root))


def _series_listing(series: Sequence[DicomSeries], root: Path) -> str:
    lines = []
    for s in series:
        uid = s.uid or "(blank SeriesInstanceUID)"
        desc = f'"{s.description}"' if s.description else "(no description)"
        first = os.path.relpath(os.path.dirname(s.files[0]), root)
        lines.append(f"  {uid}  {desc}, {len(s.files)} slice{'s' * (len(s.files) != 1)}, in {first}")
    return "\n".join(lines)


def dicom_series(path: PathLike, uid: str | None = None) -> DicomSeries:
    """Find the DICOM series in a folder (searched recursively), from headers only.

    One series must be there, or `uid` must name one: a folder holding several is E1004
    listing each (UID, description, slice count), none is E1003, an empty folder E1005.
    A DICOM image file that GDCM cannot read is E1002 rather than a series with a
    silently missing slice.
    """
    p = Path(path)
    if p.is_file():
        raise DataError("E1003", f"{p} is a file; dicom_series reads a folder of DICOM files", p,
                        help="give the folder that holds the series, or read one file with `dicom_file`")
    root = _existing_dir(p)
    found = _readable_series(root)
    if not found:
        if not any(files for _, _, files in os.walk(root)):
            raise DataError("E1005", f"folder {root} is empty", root)
        raise DataError("E1003", f"no DICOM series in {root}: none of its files is a DICOM image", root,
                        help="check the folder; DICOMDIR files and reports hold no images")
    if uid is not None:
        if uid not in found:
            listing = _series_listing([_series_info(u, f, root) for u, f in sorted(found.items())], root)
            raise DataError("E1003", f"no DICOM series with SeriesInstanceUID {uid} in {root}; it holds:\n{listing}",
                            root, help="copy one of the UIDs above into `uid=`")
        return _series_info(uid, found[uid], root)
    if len(found) > 1:
        series = [_series_info(u, f, root) for u, f in sorted(found.items())]
        raise DataError("E1004", f"{root} holds {len(found)} DICOM series:\n{_series_listing(series, root)}", root,
                        help=f'choose one with `uid=`, e.g. dicom_series("{p}", uid="{series[0].uid or "..."}")')
    ((only, files),) = found.items()
    return _series_info(only, files, root)


def _floats(text: str) -> list[float] | None:
    try:
        values = [float(v) for v in text.split("\\")]
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


def _check_slices(reader: sitk.ImageSeriesReader, files: Sequence[str]) -> None:
    """E1010 when the slices of a series are not parallel, not evenly spaced (a missing
    or repeated slice), or shifted sideways (gantry tilt): SimpleITK then builds the
    volume from the first slices' geometry and only warns, so every voxel position
    after the gap would be wrong. Series without Image Plane tags are not checked."""
    n = len(files)
    ipp = [_floats(_slice_meta(reader, i, "0020|0032")) for i in range(n)]
    iop = [_floats(_slice_meta(reader, i, "0020|0037")) for i in range(n)]
    if any(v is None or len(v) != 3 for v in ipp) or any(v is None or len(v) != 6 for v in iop):
        return
    orient = np.array(iop, dtype=float)
    for i in range(1, n):
        if np.max(np.abs(orient[i] - orient[0])) > 1e-3:
            raise DataError("E1010", f"the slices of the DICOM series are not parallel: {files[i]} has orientation "
                            f"{_vec(orient[i])}, {files[0]} has {_vec(orient[0])}", files[i],
                            help="this is a localizer or a mix of acquisitions; choose another series")
    normal = np.cross(orient[0][:3], orient[0][3:])
    pos = np.array(ipp, dtype=float)
    steps = np.diff(pos, axis=0)
    along = steps @ normal
    spacing = float(np.median(np.abs(along)))
    side = np.linalg.norm(steps - np.outer(along, normal), axis=1)
    tol = max(1e-3, 0.01 * spacing)
    for i in range(n - 1):
        if abs(abs(along[i]) - spacing) > tol or side[i] > tol:
            what = ("two slices at the same position" if abs(along[i]) <= tol else
                    f"{abs(along[i]):.4g} mm between slices where the series' spacing is {spacing:.4g} mm (a missing "
                    f"slice?)" if side[i] <= tol else
                    f"consecutive slices shifted sideways by {side[i]:.4g} mm (a tilted gantry?)")
            raise DataError("E1010", f"the slices of the DICOM series are not evenly spaced: {what}, between "
                            f"{files[i]} and {files[i + 1]}", files[i + 1],
                            help="a volume built from these slices would put voxels at wrong positions; "
                                 "check that no file is missing, or choose another series")


def _vec(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def dicom_to_image(x: DicomSeries) -> Volume:
    """Decode a DICOM series into a 3-D volume with SimpleITK's ImageSeriesReader (GDCM).

    Values and geometry are exactly what SimpleITK gives for these files: slices in
    GDCM's order along the normal, rescale slope/intercept applied (CT in HU), direction
    from ImageOrientationPatient. Unevenly spaced or non-parallel slices are E1010.
    """
    if not x.files:
        raise DataError("E1003", f"the DICOM series {x.uid or '(blank UID)'} has no files", x.source)
    for f in x.files:
        _existing_file(f)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(x.files))
    reader.SetImageIO("GDCMImageIO")
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with _itk_quiet():  # its only warning is non-uniform spacing, checked below as an error
            img = reader.Execute()
    except RuntimeError as exc:
        for f in x.files:
            one = sitk.ImageFileReader()
            one.SetFileName(f)
            one.SetImageIO("GDCMImageIO")
            try:
                one.ReadImageInformation()
            except RuntimeError:
                raise _dicom_failure(Path(f)) from exc
        raise DataError("E1002", f"cannot read the DICOM series in {x.source}: {_reason(exc)}", x.source,
                        help="the slices may differ in size or pixel type") from exc
    if len(x.files) > 1:
        _check_slices(reader, x.files)
    modality = x.modality if x.modality != "Any" else DICOM_MODALITIES.get(_slice_meta(reader, 0, "0008|0060"), "Any")
    return _check_finite(Volume.from_sitk(img, "image", modality, x.source or os.path.dirname(x.files[0])))


def _readable_series(root: Path) -> dict[str, list[str]]:
    """The DICOM series under `root`; a file that looks like DICOM but cannot be read
    is an error (E1002), because it would silently be missing from its series."""
    found = _find_series(root)
    claimed = {os.path.normpath(f) for files in found.values() for f in files}
    broken = _unreadable_dicom(root, claimed)
    if broken:
        raise DataError("E1002", f"{len(broken)} DICOM file{'s' * (len(broken) != 1)} under {root} cannot be read "
                        f"and would be missing from the series: {_name_list(broken, root)}", broken[0],
                        help="the files may be truncated or corrupt; copy them again from the source")
    return found


def dicom_folder(root: PathLike) -> list[Case[DicomSeries]]:
    """One case per DICOM series under `root`, keyed by SeriesInstanceUID (a series with
    a blank UID is keyed by its folder)."""
    return _eager("dicom_folder", root=root)


def _list_dicom_folder(root: PathLike) -> list[CaseSpec]:
    """The series under `root`, from headers only; each case's files are its slices."""
    base = _existing_dir(root)
    found = _readable_series(base)
    if not found:
        raise DataError("E1005", f"no DICOM series under {base}", base)
    specs = []
    for uid, files in found.items():
        key = uid or os.path.relpath(os.path.dirname(files[0]), base)
        info = _series_info(uid, files, base)
        specs.append(CaseSpec(key, tuple(files), {"uid": uid, "files": list(files), "description": info.description,
                                                  "modality": info.modality, "source": info.source}))
    return sorted(specs, key=lambda c: c.id)


def _load_dicom_series(spec: CaseSpec) -> DicomSeries:
    a = spec.args
    return DicomSeries(str(a["uid"]), tuple(str(f) for f in a["files"]), str(a["description"]),
                       str(a["modality"]), None if a["source"] is None else str(a["source"]))


# ===== reading by extension, labels =========================================================

_BY_SUFFIX: dict[str, Callable[[PathLike], Volume]] = {
    ".nii.gz": nifti, ".nii": nifti, ".hdr": nifti, ".nrrd": nrrd, ".nhdr": nrrd, ".mha": mha, ".mhd": mha,
    ".png": png, ".tif": tiff, ".tiff": tiff, ".jpg": jpeg, ".jpeg": jpeg, ".npy": numpy, ".npz": numpy,
    ".dcm": dicom_file,
}


def read_image(path: PathLike) -> Volume:
    """Read one image file, choosing the reader by its extension (as `folder` does)."""
    p = Path(path)
    name = p.name.lower()
    for suffix, reader in _BY_SUFFIX.items():
        if name.endswith(suffix):
            return reader(p)
    _existing_file(p)
    known = ", ".join(_BY_SUFFIX)
    raise DataError("E1002", f"cannot tell the format of {p} from its name", p, help=f"known extensions: {known}")


def as_labels(vol: Volume, kind: str = "labels") -> Volume:
    """`vol` as a label map of `kind`: one integer per voxel.

    Integer files keep their dtype; a float file whose values are all whole numbers
    becomes the smallest unsigned type that holds them; a mask saved as RGB with equal
    channels keeps one channel. Fractional values or differing channels are E1009: they
    mean a probability map or a colour picture was given as labels, and rounding would
    hide that.
    """
    a = vol.array
    if vol.channels > 1 or a.ndim > vol.dim:
        if all(np.array_equal(a[..., 0], a[..., c]) for c in range(1, a.shape[-1])):
            a = a[..., 0]
        else:
            raise DataError("E1009", f"{vol.source}: a label file must hold one value per voxel, this one has "
                            f"{a.shape[-1]} differing channels (a colour image?)", vol.source,
                            help="save label maps as single-channel integer images")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    elif a.dtype.kind == "f":
        whole = np.rint(a)
        if not np.array_equal(whole, a):
            frac = np.unravel_index(int(np.argmax(whole != a)), a.shape)
            raise DataError("E1009", f"{vol.source}: a label file must hold whole numbers, this one holds "
                            f"{a[frac]!r} at voxel (x, y, z) = {tuple(int(i) for i in reversed(frac))}",
                            vol.source, help="this looks like a probability map; threshold it, or read it as an image")
        lo, hi = (float(whole.min()), float(whole.max())) if whole.size else (0.0, 0.0)
        dtype = (np.uint8 if hi <= 255 else np.uint16 if hi <= 65535 else np.uint32) if lo >= 0 else np.int32
        a = whole.astype(dtype)
    elif a.dtype.kind not in "iu":
        raise DataError("E1009", f"{vol.source}: {a.dtype} values cannot be labels", vol.source)
    return Volume(np.ascontiguousarray(a), vol.spacing, vol.origin, vol.direction, kind, vol.modality, vol.source,
                  vol.names)


def _read_label(path: Path, kind: str) -> Volume:
    return as_labels(read_image(path), kind)


_DECLARED_KINDS = {"LabelMap": "labels", "Instances": "instances"}  # declared type -> the Volume kind it reads as


def conform(value: object, declared: object) -> object:
    """`value`, as a reader gave it, checked against what the pipeline declares it to be
    (`medasl.lower.plan.declaration`): the executor calls this on every reader's result.

    A file declared `LabelMap` or `Instances` becomes a label map (`as_labels`: E1009
    for fractional values); label values outside 0..K-1 of a declared `LabelMap[D, K]`
    are E1040, naming the file and the values found (a 0/255 mask declared with two
    classes would otherwise make 256 one-hot channels and a Dice of 0). A file whose
    dimension differs from the declared one is E1041, except a 3-D file one slice thick
    declared 2-D, which is that slice. A class outside 0..K-1 of a declared `Class[K]`
    is E1040 too.
    """
    if not isinstance(declared, dict):
        return value
    if "pair" in declared and isinstance(value, Pair):
        first, second = declared["pair"]
        return Pair(conform(value.input, first), conform(value.target, second))
    kind = declared.get("kind")
    classes = declared.get("classes")
    if kind == "Class" and isinstance(value, int | np.integer) and isinstance(classes, int):
        if not 0 <= int(value) < classes:
            raise DataError("E1040", f"class {int(value)} is outside 0..{classes - 1} of the declared Class[{classes}]",
                            None, help=f"declare the number of classes the data holds (Class[{int(value) + 1}] "
                                       "or more)")
        return value
    if not isinstance(value, Volume):
        return value
    dim = declared.get("dim")
    if isinstance(dim, int) and value.dim != dim:
        value = _declared_dim(value, dim, str(kind))
    if kind in _DECLARED_KINDS:
        value = as_labels(value, _DECLARED_KINDS[str(kind)])
        if kind == "LabelMap" and isinstance(classes, int):
            _check_classes(value, classes, declared)
    return value


def _declared_dim(vol: Volume, dim: int, kind: str) -> Volume:
    """`vol` as a `dim`-D volume: a 3-D volume one slice thick declared 2-D is that slice
    (when the slice axis is a world axis, so the 2-D geometry is exact); any other
    difference is E1041."""
    size = "x".join(str(n) for n in reversed(vol.array.shape[: vol.dim]))
    if vol.dim == 3 and dim == 2 and vol.array.shape[0] == 1:
        direction = np.asarray(vol.direction, dtype=float).reshape(3, 3)
        if np.allclose(direction[2, :2], 0.0) and np.allclose(direction[:2, 2], 0.0):
            return Volume(np.ascontiguousarray(vol.array[0]), vol.spacing[:2], vol.origin[:2],
                          tuple(direction[:2, :2].ravel()), vol.kind, vol.modality, vol.source, vol.names)
    where = vol.source or "the file"
    if vol.dim < dim:
        hint = (f"declare it {vol.dim}-D (`{kind}[{vol.dim}, ...]`) and use 2-D operators and networks"
                if vol.dim == 2 else f"declare it {vol.dim}-D")
    else:
        hint = f"declare it {vol.dim}-D (`{kind}[{vol.dim}, ...]`), or read the right file"
    raise DataError("E1041", f"{where} is a {vol.dim}-D image ({size}), but the pipeline declares it {dim}-D",
                    vol.source, help=hint)


def _check_classes(vol: Volume, classes: int, declared: dict[str, object]) -> None:
    """E1040 when a label map declared with `classes` classes holds values outside
    0..classes-1, naming the values found."""
    a = vol.array
    if not a.size:
        return
    lo, hi = int(a.min()), int(a.max())
    if lo >= 0 and hi < classes:
        return
    values = np.unique(a)
    outside = [int(v) for v in values if not 0 <= int(v) < classes]
    shown = ", ".join(str(v) for v in outside[:_MAX_LISTED]) + (
        f" and {len(outside) - _MAX_LISTED} more" if len(outside) > _MAX_LISTED else "")
    found = ", ".join(str(int(v)) for v in values[:_MAX_LISTED]) + (" ..." if values.size > _MAX_LISTED else "")
    dim = declared.get("dim")
    written = f"LabelMap[{dim if isinstance(dim, int) else 'D'}, {classes}]"
    if values.size == 2 and int(values[0]) == 0:
        help_text = (f"a mask stored as 0/{int(values[1])}: declare `LabelMap[..., {int(values[1]) + 1}]` and keep "
                     f"the object as class 1 with `select_labels(labels=({int(values[1])},))`")
    else:
        help_text = (f"declare as many classes as the largest value needs (`LabelMap[..., {hi + 1}]`), or keep the "
                     "values the study needs with `select_labels`, which numbers them 1, 2, ...")
    raise DataError("E1040", f"{vol.source or 'the label file'} holds label value{'s' * (len(outside) != 1)} "
                    f"{shown} outside 0..{classes - 1} of the declared {written} (values found: {found})",
                    vol.source, help=help_text)


# ===== folder datasets ======================================================================


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A regex for a glob with `*`s that must all match the same (non-empty) id.

    Only `*` is a wildcard, and it never crosses a `/`: the id names a case, so it
    must be found the same way in the image and the label pattern.
    """
    if "*" not in pattern:
        raise ValueError(f"pattern {pattern!r} has no `*` to match the case id")
    if "**" in pattern or any(c in pattern for c in "?[]"):
        raise ValueError(f"pattern {pattern!r}: only `*` (within one path part) is a wildcard")
    parts = pattern.split("*")
    out = [re.escape(parts[0])]
    for k, part in enumerate(parts[1:]):
        out.append("(?P<id>[^/]+?)" if k == 0 else "(?P=id)")
        out.append(re.escape(part))
    return re.compile("".join(out))


def _match(root: Path, pattern: str) -> dict[str, Path]:
    """Files under `root` matching `pattern`, by case id. Hidden files (`.name`, such as
    macOS `._` resource forks) are skipped: they are never images and would read as
    corrupt ones."""
    regex = _pattern_regex(pattern)
    found: dict[str, Path] = {}
    for p in sorted(root.glob(pattern)):
        rel = p.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")) or not p.is_file():
            continue
        m = regex.fullmatch(rel)
        if m is not None:
            found[m.group("id")] = p
    return found


def _name_list(paths: Sequence[Path], root: Path) -> str:
    names = [os.path.relpath(p, root) for p in paths]
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def _nothing_matched(root: Path, pattern: str, what: str) -> DataError:
    if not any(root.iterdir()):
        return DataError("E1005", f"folder {root} is empty", root)
    return DataError("E1005", f"the {what} pattern {pattern!r} matched no file under {root}", root,
                     help="patterns are relative to the folder; `*` matches within one file or folder name")


def _split_shared(images: dict[str, Path], labels: dict[str, Path]) -> None:
    """Give a file matched by both patterns to one side: the one whose `*` matched less,
    i.e. the more specific pattern (`*_seg.nii.gz` over `*.nii.gz`), whichever of the
    two it is. Equal ids leave the file on both sides (then pairing reports it)."""
    by_path_img = {p: k for k, p in images.items()}
    for lab_id, p in list(labels.items()):
        img_id = by_path_img.get(p)
        if img_id is None:
            continue
        if len(lab_id) < len(img_id):
            del images[img_id]
        elif len(img_id) < len(lab_id):
            del labels[lab_id]


def _list_paired(root: PathLike, image: str, label: str | None, label_kind: str) -> list[CaseSpec]:
    """The cases of a folder dataset from file names alone: E1005 when a pattern matches
    nothing, E1006 naming the unpaired files. No image is opened."""
    base = _existing_dir(root)
    images_found = _match(base, image)
    if label is not None:
        labels_found = _match(base, label)
        _split_shared(images_found, labels_found)
        if not labels_found:
            raise _nothing_matched(base, label, "label")
    if not images_found:
        raise _nothing_matched(base, image, "image")
    if label is None:
        return [CaseSpec(cid, (str(path),), {"image": str(path), "label": None, "kind": label_kind})
                for cid, path in sorted(images_found.items())]
    lonely_images = sorted(images_found[k] for k in images_found.keys() - labels_found.keys())
    lonely_labels = sorted(labels_found[k] for k in labels_found.keys() - images_found.keys())
    if lonely_images or lonely_labels:
        parts = []
        if lonely_images:
            parts.append(f"{len(lonely_images)} image{'s' * (len(lonely_images) != 1)} without a label: "
                         f"{_name_list(lonely_images, base)}")
        if lonely_labels:
            parts.append(f"{len(lonely_labels)} label{'s' * (len(lonely_labels) != 1)} without an image: "
                         f"{_name_list(lonely_labels, base)}")
        raise DataError("E1006", f"unpaired files under {base}: " + "; ".join(parts),
                        (lonely_images or lonely_labels)[0],
                        help=f"an image and its label are paired by the part matched by `*` in {image!r} and "
                             f"{label!r}; add the missing files or remove the extra ones")
    return [CaseSpec(cid, (str(images_found[cid]), str(labels_found[cid])),
                     {"image": str(images_found[cid]), "label": str(labels_found[cid]), "kind": label_kind})
            for cid in sorted(images_found)]


def _load_paired(spec: CaseSpec) -> Pair[Volume, Volume]:
    """Read one (image, label) case listed by `_list_paired`; E1007 when the label's
    grid differs from the image's (and is not the same grid stored in another order)."""
    args = spec.args
    img = _read_image_or_series(str(args["image"]))
    kind = str(args["kind"])
    if args.get("label") is None:
        empty = np.zeros(img.array.shape[: img.dim], dtype=np.uint8)
        return Pair(img, Volume(empty, img.spacing, img.origin, img.direction, kind))
    label_path = str(args["label"])
    lab = _read_label(Path(label_path), kind)
    aligned = lab.aligned_to(img)
    if aligned is None:
        how = "; ".join(img.grid_differences(lab))
        raise DataError("E1007", f"case {spec.id}: the image {args['image']} and the label {label_path} "
                        f"are on different voxel grids: {how} (image vs label)", label_path,
                        help="the label must cover the image voxel for voxel; resample it onto the image "
                             "(nearest neighbour) or check that the right files are paired")
    return Pair(img, aligned)


def _read_image_or_series(path: str) -> Volume:
    """An image file, or the one DICOM series in a folder (as `datalist` allows)."""
    return dicom_to_image(dicom_series(path)) if Path(path).is_dir() else read_image(path)


def _datalist_rows(path: PathLike, image: str, label: str, id: str) -> tuple[Path, list[tuple[str, str, str, str]]]:
    """(line, id, image, label) of every case of a CSV table or a Decathlon dataset.json."""
    table = _existing_file(path)
    if table.suffix.lower() == ".json":
        import json as json_module

        try:
            document = json_module.loads(table.read_text(encoding="utf-8"))
            entries = document["training"]
            rows = [(f"entry {i + 1}", Path(str(e[image])).name.split(".")[0], str(e[image]), str(e[label]))
                    for i, e in enumerate(entries)]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError("E1002", f"{table} is not a Decathlon dataset.json with a `training` list of "
                            f"{image!r}/{label!r} entries: {exc!r}", table) from None
        return table, rows
    _, _, found = _csv_rows(table, (id, image, label))
    return table, [(f"line {line}", row[id], row[image], row[label]) for line, row in found]


def _list_datalist(path: PathLike, image: str = "image", label: str = "label", id: str = "id") -> list[CaseSpec]:
    """The cases a table lists; paths are relative to the table's folder. E1001 naming the
    line of a file that does not exist, E1012 for an id listed twice, E1005 for no rows."""
    table, rows = _datalist_rows(path, image, label, id)
    if not rows:
        raise DataError("E1005", f"{table} lists no case", table)
    specs: dict[str, CaseSpec] = {}
    for where, case, image_path, label_path in rows:
        files = []
        for column, value in ((image, image_path), (label, label_path)):
            target = (table.parent / value) if not Path(value).is_absolute() else Path(value)
            if not target.exists():
                raise DataError("E1001", f"{table}, {where}: the {column} {value!r} does not exist ({target})", target,
                                help=f"paths in the table are relative to its folder, {table.parent}")
            files.append(target)
        if case in specs:
            raise DataError("E1012", f"{table}, {where}: the case id {case!r} is listed twice", table)
        image_file, label_file = files
        read = sorted(str(f) for f in image_file.rglob("*") if f.is_file()) if image_file.is_dir() else [str(image_file)]
        specs[case] = CaseSpec(case, (*read, str(label_file)),
                               {"image": str(image_file), "label": str(label_file), "kind": "labels"})
    return [specs[k] for k in sorted(specs)]


def datalist(path: PathLike, image: str = "image", label: str = "label", id: str = "id") -> list[Case[Pair[Volume, Volume]]]:
    """Cases of (image, label map) listed in a table: a CSV file with columns `id`,
    `image` and `label` (names configurable), or a Medical Segmentation Decathlon
    `dataset.json` (its `training` list; the id is the image's file name without
    extension). Paths are relative to the table's folder; an image may be a folder
    holding one DICOM series. Labels are realigned onto their image like `folder`'s.

    Example table:

        id,image,label
        ct01,scans/ct01.nii.gz,labels/ct01.nii.gz
        ct02,dicom/ct02,labels/ct02.nii.gz
    """
    return _eager("datalist", path=path, image=image, label=label, id=id)


def _eager(name: str, **params: object) -> list[Case]:
    """A source read at once: every listed case loaded, in order."""
    source = SOURCES[name]
    return [Case(spec.id, source.load(spec)) for spec in source.list(**params)]


def folder(root: PathLike, image: str, label: str | None = None) -> list[Case[Pair[Volume, Volume]]]:
    """Cases of (image, label map) found under `root`, paired by the id `*` matches.

    Unpaired files are E1006 (named), no match E1005, a label whose grid differs from
    its image's E1007. A label stored in another axis order on the same physical grid
    (e.g. with a flipped y axis) is re-stored on the image's grid, which is exact.
    Without `label`, each case gets an all-background label map.
    """
    return _eager("folder", root=root, image=image, label=label)


def instance_folder(root: PathLike, image: str, label: str) -> list[Case[Pair[Volume, Volume]]]:
    """Like `folder`, with label files holding one integer id per object (kind `instances`)."""
    return _eager("instance_folder", root=root, image=image, label=label)


def images(root: PathLike, pattern: str) -> list[Case[Volume]]:
    """Every image under `root` matching `pattern`, keyed by the part matched by `*`."""
    return _eager("images", root=root, pattern=pattern)


def _list_images(root: PathLike, pattern: str) -> list[CaseSpec]:
    base = _existing_dir(root)
    found = _match(base, pattern)
    if not found:
        raise _nothing_matched(base, pattern, "image")
    return [CaseSpec(cid, (str(path),), {"path": str(path)}) for cid, path in sorted(found.items())]


def _load_image(spec: CaseSpec) -> Volume:
    return read_image(str(spec.args["path"]))


def pair_input(x: Pair[Volume, Volume]) -> Volume:
    """The input of an (input, target) pair."""
    return x.input


# ===== the synthetic phantom =================================================================


def phantom(cases: int = 8, size: Sequence[int] = (64, 64, 48), spacing: Sequence[float] = (2.0, 2.0, 3.0),
            seed: int = 0) -> list[Case[Pair[Volume, Volume]]]:
    """A synthetic abdominal CT phantom dataset, generated with NumPy from `seed`.

    Each case: air at -1000 HU around an elliptic body of soft tissue (~40 HU) with a
    bright spine (~400 HU), an organ-like rotated ellipsoid at ~60 HU (label 1) holding a
    few darker lesions (still label 1), and Gaussian noise (sigma 12 HU); int16 HU,
    labels uint8 in {0, 1}. Shapes and positions vary per case. Case `i` depends only on
    (`seed`, `i`), so `cases=4` gives the first four cases of `cases=8`, and the quickstart
    and tests need no download. The grid is centred on the world origin.
    """
    return _eager("phantom", cases=cases, size=size, spacing=spacing, seed=seed)


def _list_phantom(cases: int = 8, size: Sequence[int] = (64, 64, 48),
                  spacing: Sequence[float] = (2.0, 2.0, 3.0), seed: int = 0) -> list[CaseSpec]:
    """The phantom's cases: nothing to read, each generated from (`seed`, index)."""
    nx, ny, nz = (int(v) for v in size)
    sx, sy, sz = (float(v) for v in spacing)
    if min(nx, ny, nz) < 1 or min(sx, sy, sz) <= 0 or cases < 0:
        raise ValueError("phantom needs positive cases, size and spacing")
    return [CaseSpec(f"case{i:03d}", (), {"index": i, "size": [nx, ny, nz], "spacing": [sx, sy, sz], "seed": int(seed)})
            for i in range(int(cases))]


def _load_phantom(spec: CaseSpec) -> Pair[Volume, Volume]:
    """Generate phantom case `index` (see `phantom`)."""
    a = spec.args
    nx, ny, nz = (int(v) for v in a["size"])
    sx, sy, sz = (float(v) for v in a["spacing"])
    i, seed = int(a["index"]), int(a["seed"])
    origin = (-(nx - 1) * sx / 2, -(ny - 1) * sy / 2, -(nz - 1) * sz / 2)
    ex, ey, ez = nx * sx, ny * sy, nz * sz  # extents in mm
    x = (np.arange(nx) * sx + origin[0])[None, None, :]
    y = (np.arange(ny) * sy + origin[1])[None, :, None]
    z = (np.arange(nz) * sz + origin[2])[:, None, None]
    rng = np.random.default_rng([seed % (1 << 64), i])
    body = ((x / (ex * rng.uniform(0.40, 0.47))) ** 2 + (y / (ey * rng.uniform(0.32, 0.40))) ** 2
            + (z / (ez * 0.8)) ** 2) <= 1.0
    spine_r = min(ex, ey) * rng.uniform(0.05, 0.07)
    spine = ((x / spine_r) ** 2 + ((y - ey * 0.2) / spine_r) ** 2 <= 1.0) & body
    cx, cy, cz = ex * rng.uniform(-0.12, 0.12), ey * rng.uniform(-0.10, 0.05), ez * rng.uniform(-0.1, 0.1)
    ax, ay, az = ex * rng.uniform(0.12, 0.20), ey * rng.uniform(0.10, 0.16), ez * rng.uniform(0.15, 0.25)
    theta = rng.uniform(-math.pi / 6, math.pi / 6)
    dx, dy = x - cx, y - cy
    xr, yr = math.cos(theta) * dx + math.sin(theta) * dy, -math.sin(theta) * dx + math.cos(theta) * dy
    organ = ((xr / ax) ** 2 + (yr / ay) ** 2 + ((z - cz) / az) ** 2 <= 1.0) & body & ~spine
    hu = np.full((nz, ny, nx), -1000.0)
    hu[body] = rng.normal(40.0, 3.0)
    hu[spine] = rng.normal(400.0, 30.0)
    hu[organ] = rng.normal(60.0, 4.0)
    for _ in range(int(rng.integers(1, 4))):
        r = min(ax, ay, az) * rng.uniform(0.2, 0.4)
        lx, ly, lz = (c + a * rng.uniform(-0.5, 0.5) for c, a in ((cx, ax), (cy, ay), (cz, az)))
        lesion = (((x - lx) ** 2 + (y - ly) ** 2 + (z - lz) ** 2) <= r * r) & organ
        hu[lesion] = rng.normal(20.0, 5.0)
    hu += rng.normal(0.0, 12.0, hu.shape)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    geometry = ((sx, sy, sz), origin, _identity(3))
    img = Volume(image, *geometry, kind="image", modality="CT")
    lab = Volume(organ.astype(np.uint8), *geometry, kind="labels")
    return Pair(img, lab)


# ===== the simulated-atrophy brain phantom ===================================================

_ATROPHY_CLASSES = ("CN", "AD")  # class 0 cognitively normal, class 1 Alzheimer's disease (simulated)
# Medial temporal lobes (hippocampus and amygdala) in MNI space, RAS mm, and the spread of the
# thinning around them: elongated front to back like the hippocampus (about 4 cm long).
_MTL_CENTRES_RAS = ((25.0, -20.0, -15.0), (-25.0, -20.0, -15.0))
_MTL_SIGMA_MM = (7.0, 12.0, 7.0)
# Where the lateral and third ventricles lie (RAS mm), and how deep inside the brain a dark
# voxel must be to count as ventricle rather than sulcal CSF.
_VENTRICLE_BOX_RAS = ((-30.0, 30.0), (-50.0, 35.0), (-10.0, 40.0))
_VENTRICLE_DEPTH_MM = 15.0
_VENTRICLE_MIN_ML = 1.0


@dataclass(frozen=True)
class _BrainTemplate:
    """A T1 template prepared once for `atrophy_phantom` (arrays (z, y, x) on the template's grid)."""

    t1: np.ndarray  # float32 intensities of the template
    gm: np.ndarray  # float32 grey-matter probability, 0..1
    mtl: np.ndarray  # float32 weight 0..1: closeness to either medial temporal lobe
    ventricle_mm: np.ndarray  # float32 distance (mm) to the ventricle mask, 0 inside
    csf: float  # median T1 intensity inside the ventricles
    wm: float  # 95th percentile of the brain's intensities (white matter)
    reference: sitk.Image  # an empty image with the template's geometry


def atrophy_phantom(template: PathLike, gm: PathLike, cases: int = 12, spacing: Sequence[float] = (3.0, 3.0, 3.0),
                    seed: int = 0) -> list[Case[Pair[Volume, int]]]:
    """A SIMULATED Alzheimer's disease (AD) vs cognitively normal (CN) T1 MRI cohort, made
    from one real brain template (e.g. MNI152 2009a) and its grey-matter probability map.

    For smoke runs and teaching only: every case is the same template, warped and
    degraded; the atrophy is a crude intensity model, so nothing learnt here is evidence
    about real AD. Case `i` depends only on (`seed`, `i`); odd `i` are class 1 ("AD"),
    even `i` class 0 ("CN"), so exactly `cases // 2` cases are AD. Each case, in order:

    - atrophy on the template grid: T1 intensity is pulled towards CSF intensity by a
      fraction `a` = severity x MTL weight x GM probability, the MTL weight a Gaussian
      (sigma 7, 12, 7 mm) around MNI (+-25, -20, -15) mm (hippocampus, amygdala), placed
      with the image's physical coordinates; and the ventricles (dark voxels at least 15 mm
      inside the brain, lateral and third ventricles) grow by a radius r, the voxels within
      r mm of them set to CSF intensity (a dilation by distance transform). AD: severity
      0.4-0.8, r 1.5-4 mm; CN: severity 0-0.1, r 0-1 mm (normal ageing);
    - a random affine about the grid centre (scale +-4 % per axis, rotation +-3 degrees,
      shift +-3 mm) and resampling, anti-aliased and linear, to `spacing` mm; origin and
      direction stay the template's, the size is the template's extent / `spacing`;
    - a smooth multiplicative bias field (exp of a random quadratic, about +-15 %), a
      global gain 0.9-1.1 and Rician noise (sigma 1-4 % of white-matter intensity).

    Returns float32 MR images in the template's intensity units, each with its class
    index (a Python int, as `classified` gives); the class names are
    `args["classes"]` of the listed cases: ("CN", "AD").
    """
    return _eager("atrophy_phantom", template=template, gm=gm, cases=cases, spacing=spacing, seed=seed)


def _list_atrophy_phantom(template: PathLike, gm: PathLike, cases: int = 12,
                          spacing: Sequence[float] = (3.0, 3.0, 3.0), seed: int = 0) -> list[CaseSpec]:
    """The simulated cohort's cases: both files must exist (E1001 now); voxels are read at load."""
    t1_path, gm_path = _existing_file(template), _existing_file(gm)
    sx, sy, sz = (float(v) for v in spacing)
    if min(sx, sy, sz) <= 0 or cases < 0:
        raise ValueError("atrophy_phantom needs a positive number of cases and spacing")
    return [CaseSpec(f"subj{i:03d}", (str(t1_path), str(gm_path)),
                     {"template": str(t1_path), "gm": str(gm_path), "index": i, "spacing": [sx, sy, sz],
                      "seed": int(seed), "class": i % 2, "classes": list(_ATROPHY_CLASSES)})
            for i in range(int(cases))]


def _stamp(path: str) -> tuple[int, int]:
    """A file's size and mtime: part of a cache key, so that a changed file is read again."""
    st = Path(path).stat()
    return st.st_size, st.st_mtime_ns


def _ras_coordinates(vol: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World RAS mm (x right, y anterior, z superior) of every voxel centre, (z, y, x)
    arrays: from the volume's LPS geometry, so any origin, spacing and direction work."""
    m = _index_matrix(vol)
    steps = [np.arange(n, dtype=np.float64) for n in reversed(vol.array.shape[:3])]  # x, y, z indices
    grids = (steps[0][None, None, :], steps[1][None, :, None], steps[2][:, None, None])
    lps = [vol.origin[c] + sum(m[c, k] * grids[k] for k in range(3)) for c in range(3)]
    return (-lps[0]).astype(np.float32), (-lps[1]).astype(np.float32), lps[2].astype(np.float32)


@functools.lru_cache(maxsize=1)  # ~200 MB per 1 mm template
def _brain_template(template: str, gm: str, stamps: tuple[tuple[int, int], ...]) -> _BrainTemplate:
    """Read and prepare a template once per process (`stamps`, the files' sizes and mtimes,
    make a changed file re-read)."""
    from scipy import ndimage

    t1_vol, gm_vol = read_image(template), read_image(gm)
    if t1_vol.dim != 3 or t1_vol.channels != 1:
        raise DataError("E1002", f"{template} is not a 3-D single-channel image", template)
    aligned = gm_vol.aligned_to(t1_vol)
    if aligned is None:
        how = "; ".join(t1_vol.grid_differences(gm_vol))
        raise DataError("E1007", f"the template {template} and the grey-matter map {gm} are on different voxel "
                        f"grids: {how} (template vs map)", gm, help="the GM map must be on the template's grid")
    t1 = t1_vol.array.astype(np.float32)
    g = aligned.array.astype(np.float32)
    g = np.clip(g / max(float(g.max()), 1e-6), 0.0, 1.0)  # a probability however it is stored (0..1, 0..255)
    x, y, z = _ras_coordinates(t1_vol)
    mtl = np.zeros_like(t1)
    for cx, cy, cz in _MTL_CENTRES_RAS:
        sx, sy, sz = _MTL_SIGMA_MM
        mtl = np.maximum(mtl, np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2 + ((z - cz) / sz) ** 2)))
    brain = t1 > 0.05 * float(t1.max())
    wm = float(np.percentile(t1[brain], 95))
    spacing_zyx = tuple(reversed(t1_vol.spacing))
    depth = ndimage.distance_transform_edt(brain, sampling=spacing_zyx)
    (x0, x1), (y0, y1), (z0, z1) = _VENTRICLE_BOX_RAS
    dark = brain & (t1 < 0.5 * wm) & (depth > _VENTRICLE_DEPTH_MM)
    dark &= (x > x0) & (x < x1) & (y > y0) & (y < y1) & (z > z0) & (z < z1)
    labels, n = ndimage.label(dark)
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * float(np.prod(t1_vol.spacing)) / 1000.0
    ventricles = np.isin(labels, [k for k in range(1, n + 1) if sizes[k] >= _VENTRICLE_MIN_ML])
    if not ventricles.any():
        raise DataError("E1002", f"{template}: no ventricles found (dark voxels deep inside the brain near the "
                        "midline); atrophy_phantom needs a skull-stripped T1 template in MNI space", template)
    ventricle_mm = ndimage.distance_transform_edt(~ventricles, sampling=spacing_zyx).astype(np.float32)
    reference = sitk.Image([int(v) for v in reversed(t1.shape)], sitk.sitkUInt8)
    reference.SetSpacing(t1_vol.spacing)
    reference.SetOrigin(t1_vol.origin)
    reference.SetDirection(t1_vol.direction)
    return _BrainTemplate(t1, g, mtl.astype(np.float32), ventricle_mm, float(np.median(t1[ventricles])), wm,
                          reference)


def _random_affine(rng: np.random.Generator, centre: Sequence[float]) -> sitk.AffineTransform:
    """Scale +-4 % per axis, rotation +-3 degrees about each axis, shift +-3 mm, about `centre`."""
    ax, ay, az = np.deg2rad(rng.uniform(-3.0, 3.0, 3))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    matrix = rz @ ry @ rx @ np.diag(rng.uniform(0.96, 1.04, 3))
    affine = sitk.AffineTransform(3)
    affine.SetCenter([float(c) for c in centre])
    affine.SetMatrix([float(v) for v in matrix.ravel()])
    affine.SetTranslation([float(v) for v in rng.uniform(-3.0, 3.0, 3)])
    return affine


def _bias_field(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """exp of a random quadratic polynomial in coordinates scaled to -1..1: a smooth gain of
    about +-15 %, as a receive coil gives."""
    z, y, x = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    terms = (x, y, z, x * x, y * y, z * z, x * y, y * z, x * z)
    c = rng.normal(0.0, 0.05, len(terms))
    return np.exp(sum(ci * t for ci, t in zip(c, terms))).astype(np.float32)


def _load_atrophy_phantom(spec: CaseSpec) -> Pair[Volume, int]:
    """Generate case `index` of the simulated cohort (see `atrophy_phantom`)."""
    a = spec.args
    template, gm = str(a["template"]), str(a["gm"])
    _existing_file(template)
    _existing_file(gm)
    base = _brain_template(template, gm, (_stamp(template), _stamp(gm)))
    i, label = int(a["index"]), int(a["class"])
    rng = np.random.default_rng([int(a["seed"]) % (1 << 64), i])
    # severities first, so that one case's draws never depend on the template's size
    severity = rng.uniform(0.4, 0.8) if label else rng.uniform(0.0, 0.1)
    radius = rng.uniform(1.5, 4.0) if label else rng.uniform(0.0, 1.0)
    ref = base.reference
    centre = ref.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in ref.GetSize()])
    affine = _random_affine(rng, centre)
    gain, noise = rng.uniform(0.9, 1.1), rng.uniform(0.01, 0.04) * base.wm
    # grey matter fades to CSF in the MTL; tissue next to the ventricles becomes CSF (a
    # dilation by `radius` mm, with a 1 mm soft edge against aliasing)
    grown = np.clip(radius - base.ventricle_mm + 0.5, 0.0, 1.0)
    amount = np.clip(severity * base.mtl * base.gm + grown, 0.0, 1.0)
    t1 = base.t1 - amount * np.maximum(base.t1 - base.csf, 0.0)
    img = sitk.GetImageFromArray(t1.astype(np.float32))
    img.CopyInformation(ref)
    spacing = [float(v) for v in a["spacing"]]
    sigma = [max(0.0, (s - r) / 2.0) for s, r in zip(spacing, ref.GetSpacing())]  # anti-aliasing, as skimage
    if max(sigma) > 0:
        img = sitk.DiscreteGaussian(img, [s * s for s in sigma], 32, 0.01, True)
    size = [max(1, round(n * r / s)) for n, r, s in zip(ref.GetSize(), ref.GetSpacing(), spacing)]
    out = sitk.Resample(img, size, affine, sitk.sitkLinear, ref.GetOrigin(), spacing, ref.GetDirection(), 0.0,
                        sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(out)
    arr = arr * _bias_field(rng, arr.shape) * gain
    real = arr + rng.normal(0.0, noise, arr.shape)
    imag = rng.normal(0.0, noise, arr.shape)
    rician = np.sqrt(real * real + imag * imag).astype(np.float32)  # magnitude image: Rician noise
    vol = Volume(rician, tuple(spacing), out.GetOrigin(), out.GetDirection(), kind="image", modality="MR",
                 source=template)
    return Pair(vol, label)


# ===== writers ================================================================================


def _targets(x: object, path: PathLike) -> list[tuple[Path, Volume]]:
    """(file, volume) pairs to write: one volume, or a dataset whose case ids, made into
    safe file names (`outputs.case_file_name`), replace the `*` in `path`."""
    if isinstance(x, Volume):
        return [(Path(path), x)]
    if isinstance(x, Sequence) and all(isinstance(c, Case) for c in x):
        if "*" not in str(path):
            raise ValueError(f"writing a dataset needs a `*` in the path for the case id: {path}")
        out = []
        for case in x:
            if not isinstance(case.value, Volume):
                raise TypeError(f"case {case.id}: cannot write a {type(case.value).__name__} as an image")
            out.append((Path(str(path).replace("*", outputs.case_file_name(case.id))), case.value))
        return out
    raise TypeError(f"cannot write a {type(x).__name__} as an image")


def _check_written_nifti(path: Path) -> None:
    """SimpleITK's NIfTI writer reports no error when the disk fills up: it leaves a short
    (even empty) file. The header and the size (for .nii.gz the gzip trailer, which a cut
    stream lacks) tell whether the whole file was written."""
    try:
        with _open_maybe_gz(path) as f:
            head = f.read(540)
    except (EOFError, OSError, zlib.error) as exc:
        raise outputs.IncompleteOutput(path, f"the NIfTI file written is unreadable ({exc})") from None
    layout = _nifti_layout(head)
    if layout is None:
        raise outputs.IncompleteOutput(path, "the NIfTI file written has no complete header")
    expected = layout.offset + layout.nbytes
    if path.name.lower().endswith(".gz"):
        got, error = _gzip_length(path, expected)
    else:
        got, error = path.stat().st_size, None
    if got < expected:
        raise outputs.IncompleteOutput(path, f"only {got} of its {expected} bytes were written"
                                       + (f" ({error})" if error else ""))


def _write_atomic(img: sitk.Image, target: Path, compress: bool) -> list[Path]:
    """Write through a private folder beside `target` and rename into place
    (`outputs.commit`), so a killed run or a full disk never leaves a half-written image
    that looks complete; a two-file format (.mhd, .nhdr) has its data file renamed first."""

    def write(path: Path) -> None:
        sitk.WriteImage(img, str(path), useCompression=compress)
        if path.name.lower().endswith((".nii", ".nii.gz")):
            _check_written_nifti(path)

    try:
        return outputs.commit(target, write)
    except RuntimeError as exc:  # SimpleITK's writers raise RuntimeError, with the OS's reason in the text
        if "No space left on device" in str(exc):
            raise outputs.disk_full(target) from None
        raise


def _write(x: object, path: PathLike, op: str, compress: bool) -> list[Path]:
    written = []
    for target, vol in _targets(x, path):
        written += _write_atomic(vol.to_sitk(), outputs.with_suffix(op, target), compress)
    return written


def write_nifti(x: Volume | Sequence[Case[Volume]], path: PathLike) -> list[Path]:
    """Write as NIfTI (.nii.gz unless the name says .nii), geometry kept (NIfTI stores it
    as float32, so to about 1e-7 relative). Returns the files written."""
    return _write(x, path, "write_nifti", compress=True)


def write_nrrd(x: Volume | Sequence[Case[Volume]], path: PathLike) -> list[Path]:
    """Write as NRRD (.nrrd), geometry kept exactly; voxels gzip-compressed."""
    return _write(x, path, "write_nrrd", compress=True)


def write_mha(x: Volume | Sequence[Case[Volume]], path: PathLike) -> list[Path]:
    """Write as MetaImage (.mha, or .mhd with its compressed data file .zraw), geometry
    kept exactly. Returns the files written (for .mhd, the header and its data file)."""
    return _write(x, path, "write_mha", compress=True)


def _png_array(vol: Volume) -> np.ndarray:
    """The pixels a PNG can hold: labels as their integer values (8-bit, or 16-bit when a
    value exceeds 255, so instance ids are not lost); uint8 images unchanged; other
    images rescaled from their range to 0..255."""
    a = vol.array
    if vol.dim == 3 and a.shape[0] == 1:
        a = a[0]
    elif vol.dim != 2:
        # the checker refuses 3-D data where it knows the dimensionality (E0204); a file read
        # without a declared one shows it only here
        raise DataError("E1030", f"`write_png` writes 2-D images, but this is a {vol.dim}-D volume of size {vol.shape}",
                        vol.source, help="write volumes with `write_nifti`, or declare the data 2-D where it is"
                        " read (`as Image[2, ...]`) so that `medasc check` says so")
    if vol.kind in LABEL_KINDS:
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise DataError("E1031", f"label values {a.min()}..{a.max()} do not fit a PNG (0..65535)", vol.source,
                            help="write label maps with large or negative values with `write_nifti`")
        return a.astype(np.uint8 if not a.size or a.max() <= 255 else np.uint16)
    if a.dtype == np.uint8:
        return a
    f = a.astype(np.float64)
    lo, hi = (float(f.min()), float(f.max())) if f.size else (0.0, 0.0)
    scaled = np.zeros_like(f) if hi <= lo else (f - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def write_png(x: Volume | Sequence[Case[Volume]], path: PathLike) -> list[Path]:
    """Write a 2-D image or label map as PNG (see `_png_array` for the values). PNG holds
    no origin or direction; pixel spacing is written as SimpleITK does."""
    written = []
    for target, vol in _targets(x, path):
        target = outputs.with_suffix("write_png", target)
        array = _png_array(vol)
        img = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=array.ndim == 3)
        img.SetSpacing(vol.spacing[:2])
        written += _write_atomic(img, target, compress=False)
    return written




# ===== conversions: one-hot, instances, boxes =============================================


def _label_array(x: Volume, what: str) -> np.ndarray:
    """The integer class array of a label map (a trailing channel axis of length 1 dropped);
    ValueError for several channels, fractional or negative values."""
    a = x.array
    if a.ndim > x.dim:
        if a.shape[-1] != 1:
            raise ValueError(f"{what} needs a single-channel label map, got {a.shape[-1]} channels")
        a = a[..., 0]
    if a.dtype.kind == "b":
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.rint(a)):
            raise ValueError(f"{what} needs integer class values, got fractional or non-finite values")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iu":
        raise ValueError(f"{what} needs an integer label map, not {a.dtype}")
    if a.size and a.dtype.kind == "i" and a.min() < 0:
        raise ValueError(f"{what} needs class values >= 0, got {int(a.min())}")
    return a


def _class_dtype(top: int) -> type[np.unsignedinteger]:
    """The smallest unsigned type that holds the values 0 .. top."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return dtype
    return np.uint64


def one_hot(x: Volume, classes: int | None = None) -> Volume:
    """One uint8 channel per class, channels last (the Volume convention): channel k is 1
    where the label is k. `classes` (the checked K, when the executor knows it) sets the
    number of channels; without it, max label + 1 (at least 2). NumPy, not MONAI: the
    result is the same and no torch is needed."""
    a = _label_array(x, "one_hot")
    top = int(a.max()) if a.size else 0
    k = max(2, top + 1) if classes is None else int(classes)
    if top >= k:
        raise ValueError(f"one_hot: label {top} does not fit {k} classes")
    out = (a[..., None] == np.arange(k, dtype=a.dtype)).astype(np.uint8)
    return x.with_array(out, kind="onehot")


def onehot_to_labels(x: Volume) -> Volume:
    """The class of each voxel, the argmax over the trailing channel axis (the first
    channel wins ties); lossless for a one-hot map. The smallest unsigned integer type
    that holds the classes (uint8 up to 256 classes)."""
    if x.array.ndim != x.dim + 1:
        raise ValueError(f"onehot_to_labels needs a channel axis, got an array of shape {x.array.shape}")
    k = int(x.array.shape[-1])
    labels = np.argmax(x.array, axis=-1).astype(_class_dtype(max(k - 1, 0)))
    return x.with_array(labels, kind="labels")


def instances_to_labels(x: Volume) -> Volume:
    """1 (uint8) where any instance is, 0 elsewhere."""
    a = _label_array(x, "instances_to_labels")
    return x.with_array((a > 0).astype(np.uint8), kind="labels")


def labels_to_instances(x: Volume) -> Volume:
    """Number the face-connected components of the foreground (any class > 0) 1, 2, ...
    (scikit-image's measure.label, connectivity 1); uint16, or uint32 past 65535 objects."""
    from skimage.measure import label

    fg = _label_array(x, "labels_to_instances") > 0
    ids, n = label(fg, connectivity=1, return_num=True)
    return x.with_array(ids.astype(np.uint16 if n < 2**16 else np.uint32), kind="instances")


def _index_matrix(x: Volume) -> np.ndarray:
    """The matrix taking a voxel index offset ((x, y, z) order) to a world offset in mm."""
    return np.array(x.direction).reshape(x.dim, x.dim) * np.array(x.spacing)


def _half_footprint(x: Volume) -> np.ndarray:
    """Half the world-axis extent of one voxel's footprint (a parallelepiped on an
    oblique grid), per world axis."""
    return 0.5 * np.abs(_index_matrix(x)).sum(axis=1)


def mask_to_boxes(x: Volume) -> Boxes:
    """One box per face-connected component of each foreground class (scikit-image's
    measure.label and regionprops), in world mm: the world-axis-aligned bounding box of
    the component's voxel footprints (centres +- half a voxel), score 1. Ordered by
    class, then by the components' order in the array. On an oblique grid the box holds
    the component's voxels but also some voxels around it."""
    from skimage.measure import label, regionprops

    a = _label_array(x, "mask_to_boxes")
    m = _index_matrix(x)
    half = _half_footprint(x)
    origin = np.array(x.origin)
    lo: list[np.ndarray] = []
    hi: list[np.ndarray] = []
    classes: list[int] = []
    for k in (int(v) for v in np.unique(a) if v > 0):
        for region in regionprops(label(a == k, connectivity=1)):
            idx = region.coords[:, ::-1].astype(np.float64)  # (z, y, x) -> (x, y, z)
            centres = origin + idx @ m.T
            lo.append(centres.min(axis=0) - half)
            hi.append(centres.max(axis=0) + half)
            classes.append(k)
    n = len(classes)
    shape = (n, x.dim)
    return Boxes(np.array(lo).reshape(shape), np.array(hi).reshape(shape), np.array(classes, dtype=np.int64),
                 np.ones(n), source=x.source)


def boxes_to_voxels(x: Boxes, like: Volume) -> np.ndarray:
    """Boxes as voxel coordinates of `like`'s array, the way detection networks (MONAI's)
    take them: `(n, 2D)` float `[z0, y0, x0, z1, y1, x1]` in array-axis order, voxel `i`
    covering `[i, i + 1)`. A world box on an oblique grid becomes the voxel-space box
    around its corners."""
    m_inv = np.linalg.inv(_index_matrix(like))
    origin = np.array(like.origin)
    corners = np.array(np.meshgrid(*[[0, 1]] * like.dim, indexing="ij")).reshape(like.dim, -1).T
    out = np.zeros((len(x), 2 * like.dim), dtype=np.float32)
    for i in range(len(x)):
        world = x.lo[i] + corners * (x.hi[i] - x.lo[i])
        index = (world - origin) @ m_inv.T + 0.5  # continuous index (centres at i) -> footprint edges
        out[i, : like.dim] = index.min(axis=0)[::-1]
        out[i, like.dim:] = index.max(axis=0)[::-1]
    return out


def voxels_to_boxes(corners: np.ndarray, classes: np.ndarray, scores: np.ndarray, like: Volume) -> Boxes:
    """The inverse of `boxes_to_voxels`: voxel boxes of `like`'s array (a detector's
    output) as world boxes in mm, with their classes and scores."""
    corners = np.asarray(corners, dtype=np.float64).reshape(-1, 2 * like.dim)
    m = _index_matrix(like)
    origin = np.array(like.origin)
    unit = np.array(np.meshgrid(*[[0, 1]] * like.dim, indexing="ij")).reshape(like.dim, -1).T
    lo = np.zeros((len(corners), like.dim))
    hi = np.zeros((len(corners), like.dim))
    for i, box in enumerate(corners):
        start, stop = box[: like.dim][::-1] - 0.5, box[like.dim:][::-1] - 0.5  # (x, y, z) continuous index
        world = origin + (start + unit * (stop - start)) @ m.T
        lo[i], hi[i] = world.min(axis=0), world.max(axis=0)
    return Boxes(lo, hi, np.asarray(classes, dtype=np.int64), np.asarray(scores, dtype=np.float64), source=like.source)


def boxes_to_mask(x: Boxes, like: Volume) -> Volume:
    """A label map on `like`'s grid: every voxel whose centre lies in a box (bounds
    included, to 1e-6 of a voxel) gets the box's class; where boxes overlap the higher
    score wins (the later box on equal scores). Exactly inverts `mask_to_boxes` on a grid
    aligned with the world axes when the boxes do not overlap. uint8 (uint16 past 255
    classes)."""
    if x.dim != like.dim:
        raise ValueError(f"cannot paint {x.dim}-D boxes on a {like.dim}-D image")
    if len(x) and int(x.classes.min()) < 0:
        raise ValueError("box classes must be >= 0")
    top = int(x.classes.max()) if len(x) else 0
    size = np.array(like.shape)  # (x, y, z)
    out = np.zeros(like.array.shape[: like.dim], dtype=_class_dtype(top))
    m = _index_matrix(like)
    inv = np.linalg.inv(m)
    origin = np.array(like.origin)
    tol = 1e-6 * np.abs(m).sum(axis=1)
    corners = np.array(np.meshgrid(*[[0, 1]] * like.dim, indexing="ij")).reshape(like.dim, -1).T
    for i in np.argsort(x.scores, kind="stable"):
        lo, hi = x.lo[i], x.hi[i]
        world = lo + corners * (hi - lo)
        idx = (world - origin) @ inv.T
        start = np.clip(np.floor(idx.min(axis=0)).astype(int), 0, size)
        stop = np.clip(np.ceil(idx.max(axis=0)).astype(int) + 1, 0, size)
        if np.any(stop <= start):
            continue
        axes = [np.arange(a, b) for a, b in zip(start, stop)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float64)  # (x, y, z, D)
        centres = origin + grid @ m.T
        inside = np.all((centres >= lo - tol) & (centres <= hi + tol), axis=-1)
        inside = np.transpose(inside)  # (x, y, z) -> (z, y, x)
        region = tuple(slice(a, b) for a, b in zip(reversed(start), reversed(stop)))
        out[region][inside] = x.classes[i]
    return Volume(out, like.spacing, like.origin, like.direction, "labels", like.modality, like.source)


# ===== CSV tables: classes, annotations, boxes ===============================================


def _csv_rows(path: PathLike, required: Sequence[str]) -> tuple[Path, list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV table's header and its rows as (line number, {column: value}), read with the
    `csv` module (a UTF-8 byte-order mark is allowed). E1001 when the file is missing,
    E1002 naming the file and line when it is not a table: no header, a row with another
    number of fields than the header, a required column missing. Blank lines are skipped."""
    p = _existing_file(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header: list[str] | None = None
            rows: list[tuple[int, dict[str, str]]] = []
            for fields in reader:
                line = reader.line_num
                if not fields or all(not v.strip() for v in fields):
                    continue
                if header is None:
                    header = [v.strip() for v in fields]
                    continue
                if len(fields) != len(header):
                    raise DataError("E1002", f"{p}, line {line}: {len(fields)} fields where the header has "
                                    f"{len(header)}", p, help="every row of the table needs one value per column")
                rows.append((line, {k: v.strip() for k, v in zip(header, fields)}))
    except UnicodeDecodeError as exc:
        raise DataError("E1002", f"cannot read {p} as a UTF-8 CSV table: {exc}", p) from exc
    except csv.Error as exc:
        raise DataError("E1002", f"{p}, line {reader.line_num}: not a valid CSV table: {exc}", p) from exc
    if header is None:
        raise DataError("E1002", f"{p} is empty: a CSV table needs a header line naming its columns", p)
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError("E1002", f"{p}, line 1: no column {', '.join(repr(c) for c in missing)}; the columns are "
                        f"{', '.join(header)}", p, help="column names are matched exactly (case matters)")
    return p, header, rows


def _class_order(values: set[str]) -> list[str]:
    """Class values in index order: numerically when they are all numbers (so 2 < 10),
    else as strings."""
    try:
        return sorted(values, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(values)


class ClassifiedCases(list):
    """The cases of `classified` (a list of `Case(id, Pair(image, class index))`) with
    `classes`: the class values of the table, the value of class k at index k."""

    classes: tuple[str, ...] = ()


def classified(root: PathLike, pattern: str, labels: PathLike, column: str,
               id_column: str = "id") -> ClassifiedCases:
    """(image, class) cases: the images under `root` matching `pattern`, each with the
    value of `column` in the row of the CSV table `labels` whose `id_column` equals the
    part of the file name matched by `*`.

    The class values of the whole table (not only of the images found) are mapped to
    0..K-1 in sorted order (numerically when all are numbers), so the mapping does not
    depend on which images are on disk; the class of a case is that index, a Python int.
    The mapping is the result's `classes` attribute (value of class k at index k) and each
    listed case's `args["classes"]`. An image without a row is E1006 naming it; an id
    with two rows of different classes E1012; rows without an image are ignored. Read
    with the `csv` module.
    """
    specs = _list_classified(root, pattern, labels, column, id_column)
    out = ClassifiedCases(Case(s.id, _load_classified(s)) for s in specs)
    out.classes = tuple(specs[0].args["classes"]) if specs else ()
    return out


def _list_classified(root: PathLike, pattern: str, labels: PathLike, column: str,
                     id_column: str = "id") -> list[CaseSpec]:
    base = _existing_dir(root)
    found = _match(base, pattern)
    if not found:
        raise _nothing_matched(base, pattern, "image")
    table, _, rows = _csv_rows(labels, (id_column, column))
    values: dict[str, tuple[str, int]] = {}
    for line, row in rows:
        key, value = row[id_column], row[column]
        if not key or not value:
            what = id_column if not key else column
            raise DataError("E1002", f"{table}, line {line}: the {what!r} value is empty", table)
        if key in values and values[key][0] != value:
            raise DataError("E1012", f"{table}: id {key!r} has class {values[key][0]!r} on line {values[key][1]} and "
                            f"{value!r} on line {line}", table, help="give each id one row (or rows that agree)")
        values[key] = (value, line)
    classes = _class_order({v for v, _ in values.values()})
    index = {v: k for k, v in enumerate(classes)}
    lonely = [found[k] for k in sorted(found) if k not in values]
    if lonely:
        raise DataError("E1006", f"{len(lonely)} image{'s' * (len(lonely) != 1)} under {base} without a row in "
                        f"{table}: {_name_list(lonely, base)}", lonely[0],
                        help=f"each image needs a row whose {id_column!r} is the part of its name matched by `*` "
                             f"in {pattern!r}")
    return [CaseSpec(cid, (str(path),), {"path": str(path), "class": index[values[cid][0]], "classes": classes})
            for cid, path in sorted(found.items())]


def _load_classified(spec: CaseSpec) -> Pair[Volume, int]:
    return Pair(read_image(str(spec.args["path"])), int(spec.args["class"]))


# ===== instance maps from one mask file per object (Data Science Bowl 2018) ==================


def _list_mask_folder(root: PathLike, image: str, masks: str) -> list[CaseSpec]:
    """Cases of an image and a folder of object masks, paired by the id `*` matches in
    both patterns (`*/images/*.png` and `*/masks`); E1005 when nothing matches, E1006
    naming the unpaired ones. The masks are the folder's image files in name order."""
    base = _existing_dir(root)
    images_found = _match(base, image)
    if not images_found:
        raise _nothing_matched(base, image, "image")
    regex = _pattern_regex(masks.rstrip("/"))
    folders: dict[str, Path] = {}
    for p in sorted(base.glob(masks.rstrip("/"))):
        rel = p.relative_to(base).as_posix()
        if p.is_dir() and not any(part.startswith(".") for part in rel.split("/")):
            m = regex.fullmatch(rel)
            if m is not None:
                folders[m.group("id")] = p
    if not folders:
        raise _nothing_matched(base, masks, "mask folder")
    lonely = sorted(images_found.keys() ^ folders.keys())
    if lonely:
        named = [images_found.get(k) or folders[k] for k in lonely]
        raise DataError("E1006", f"unpaired files under {base}: {len(lonely)} image(s) or mask folder(s) without "
                        f"their other half: {_name_list(named, base)}", named[0],
                        help=f"an image and its masks are paired by the part matched by `*` in {image!r} and "
                             f"{masks!r}")
    specs = []
    for cid in sorted(images_found):
        files = sorted(str(f) for f in folders[cid].iterdir()
                       if f.is_file() and not f.name.startswith(".") and _readable_name(f))
        if not files:
            raise DataError("E1005", f"case {cid}: the mask folder {folders[cid]} holds no image file", folders[cid])
        specs.append(CaseSpec(cid, (str(images_found[cid]), *files), {"image": str(images_found[cid]), "masks": files}))
    return specs


def _readable_name(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in _BY_SUFFIX)


def _load_mask_folder(spec: CaseSpec) -> Pair[Volume, Volume]:
    """The image and its instance map: object k (1, 2, ...) where the k-th mask file (in
    name order) is non-zero. A pixel claimed by two masks is E1044 naming both; a mask
    of another size than the image E1007."""
    img = read_image(str(spec.args["image"]))
    size = img.array.shape[: img.dim]
    masks = [str(m) for m in spec.args["masks"]]  # type: ignore[union-attr]
    ids = np.zeros(size, dtype=np.uint16 if len(masks) < 2**16 else np.uint32)
    for k, mask_file in enumerate(masks, start=1):
        mask = as_labels(read_image(mask_file))
        if mask.array.shape != size:
            raise DataError("E1007", f"case {spec.id}: the mask {mask_file} is "
                            f"{'x'.join(map(str, reversed(mask.array.shape)))}, its image "
                            f"{'x'.join(map(str, reversed(size)))}", mask_file)
        inside = mask.array != 0
        taken = inside & (ids != 0)
        if taken.any():
            other = masks[int(ids[taken].flat[0]) - 1]
            raise DataError("E1044", f"case {spec.id}: the masks {Path(other).name} and {Path(mask_file).name} "
                            f"overlap in {int(np.count_nonzero(taken))} pixel(s); an instance map gives each pixel "
                            "one object", mask_file,
                            help="fix the masks (the community-corrected DSB 2018 masks have no overlaps), or "
                                 "remove the duplicate")
        ids[inside] = k
    return Pair(img, Volume(ids, img.spacing, img.origin, img.direction, "instances", "Any",
                            str(Path(masks[0]).parent)))


def mask_folder(root: PathLike, image: str, masks: str) -> list[Case[Pair[Volume, Volume]]]:
    """(image, instance map) cases from one mask file per object (the DSB 2018 layout)."""
    return _eager("mask_folder", root=root, image=image, masks=masks)


# ===== stacked arrays (MedMNIST's layout) ==================================================


def _stack_file(path: Path, name: str) -> tuple[Path, str | None]:
    """Where the array `name` of a stack is: a key of an .npz archive, or `name`.npy in
    a folder. E1043 naming what is there when it is not found."""
    if path.is_dir():
        target = path / (name if name.endswith(".npy") else f"{name}.npy")
        if not target.is_file():
            there = sorted(f.name for f in path.glob("*.npy"))
            raise DataError("E1043", f"no array {name!r} in {path}: it holds {', '.join(there) or 'no .npy file'}",
                            path, help="name the arrays with `images=` and `labels=`")
        return target, None
    try:
        with zipfile.ZipFile(path) as archive:
            keys = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError("E1002", f"cannot read {path} as an .npz archive: {exc}", path,
                        help="a stack is an .npz archive (np.savez) or a folder of .npy files") from exc
    if name not in keys:
        raise DataError("E1043", f"{path} has no array {name!r}; its arrays are {', '.join(keys) or 'none'}", path,
                        help="name the arrays with `images=` and `labels=` (MedMNIST: `train_images`, "
                             "`val_labels`, ...)")
    return path, name


def _stack_shape(path: Path, key: str | None) -> tuple[tuple[int, ...], np.dtype]:
    """An array's shape and dtype from its .npy header alone (the data is not read)."""
    def header(f: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        return tuple(int(n) for n in shape), dtype

    try:
        if key is None:
            with open(path, "rb") as f:
                return header(f)
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as f:
            return header(f)  # type: ignore[arg-type]
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DataError("E1002", f"cannot read the array {key or path.name} of {path}: {exc}", path) from exc


@functools.lru_cache(maxsize=4)
def _stack_array(path: str, key: str | None, stamp: tuple[int, int]) -> np.ndarray:
    """A whole array of a stack, read once per run for all its cases (`stamp`: a changed
    file is read again). Object arrays are refused, never unpickled."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if key is None:
            return loaded
        with loaded:
            return loaded[key]
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError("E1002", f"cannot read the array {key or Path(path).name} of {path}: {exc}", path,
                        help="the file may be corrupt or truncated; object arrays are never loaded") from exc


def _list_stacked(path: PathLike, images: str, labels: str, per_pixel: bool) -> list[CaseSpec]:
    """One case per entry of the image stack, paired with the same entry of the label
    stack: class labels (`(N,)` or `(N, 1)`) or, with `per_pixel`, label maps of the
    images' size. Ids are the entry numbers, zero-padded (`0000`, `0001`, ...)."""
    p = Path(path)
    if not p.exists():
        _existing_file(p)
    image_file, image_key = _stack_file(p, images)
    label_file, label_key = _stack_file(p, labels)
    image_shape, image_dtype = _stack_shape(image_file, image_key)
    label_shape, label_dtype = _stack_shape(label_file, label_key)
    what = f"{p} ({images!r}: {image_shape}, {labels!r}: {label_shape})"
    if image_dtype.kind not in "biuf" or label_dtype.kind not in "biu":
        raise DataError("E1043", f"{what}: images must hold numbers and labels integers, found {image_dtype} and "
                        f"{label_dtype}", p)
    channels = len(image_shape) >= 4 and image_shape[-1] in (3, 4)
    spatial = image_shape[1 : len(image_shape) - channels]
    if len(spatial) not in (2, 3):
        raise DataError("E1043", f"{what}: the image stack must be (N, H, W), (N, D, H, W) or have a last axis of "
                        "3 or 4 channels", p)
    if label_shape[:1] != image_shape[:1]:
        raise DataError("E1043", f"{what}: {image_shape[0]} images but {label_shape[0] if label_shape else 0} "
                        "labels", p, help="the two arrays must list the same cases in the same order")
    if per_pixel and label_shape[1:] != spatial:
        raise DataError("E1043", f"{what}: label maps must have the images' size {spatial}", p)
    if not per_pixel and label_shape[1:] not in ((), (1,)):
        raise DataError("E1043", f"{what}: class labels must be one integer per image, (N,) or (N, 1)", p,
                        help="for one label per pixel use `stacked_labels`; for several classes per image "
                             "(multi-label) choose one column first")
    width = max(4, len(str(image_shape[0] - 1)))
    files = tuple(dict.fromkeys((str(image_file), str(label_file))))
    return [CaseSpec(f"{i:0{width}d}", files, {"images": [str(image_file), image_key], "labels": [str(label_file),
                     label_key], "index": i, "dim": len(spatial), "per_pixel": per_pixel})
            for i in range(image_shape[0])]


def _load_stacked(spec: CaseSpec) -> Pair[Volume, object]:
    args = spec.args
    (image_file, image_key), (label_file, label_key) = args["images"], args["labels"]  # type: ignore[misc]
    index, dim = int(args["index"]), int(args["dim"])  # type: ignore[arg-type]
    image = _stack_array(str(image_file), image_key, _stamp(str(image_file)))[index]
    label = _stack_array(str(label_file), label_key, _stamp(str(label_file)))[index]
    source = f"{image_file}[{image_key or 'array'}][{index}]"
    vol = _check_finite(_plain_geometry(np.ascontiguousarray(image), dim, "image", source))
    if args["per_pixel"]:
        return Pair(vol, as_labels(_plain_geometry(np.ascontiguousarray(label), dim, "labels",
                                                   f"{label_file}[{label_key or 'array'}][{index}]")))
    value = int(np.asarray(label).reshape(-1)[0])
    if value < 0:
        raise DataError("E1040", f"{label_file}[{label_key or 'array'}][{index}]: class {value} is negative",
                        label_file)
    return Pair(vol, value)


def stacked_classified(path: PathLike, images: str = "images", labels: str = "labels") -> list[Case[Pair[Volume, int]]]:
    """(image, class) cases from stacked arrays: MedMNIST's .npz layout."""
    return _eager("stacked_classified", path=path, images=images, labels=labels)


def stacked_labels(path: PathLike, images: str = "images", labels: str = "labels") -> list[Case[Pair[Volume, Volume]]]:
    """(image, label map) cases from stacked arrays of images and label maps."""
    return _eager("stacked_labels", path=path, images=images, labels=labels)


_ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")


def csv_annotations(path: PathLike, coords: str = "world") -> Annotations:
    """Read a table of objects in the LUNA16 `annotations.csv` layout: `seriesuid`,
    `coordX`, `coordY`, `coordZ`, `diameter_mm` and optionally `class` (an integer >= 0;
    1 without the column); other columns are ignored. `coords` says whether the centres
    are world mm (LPS, as LUNA16) or voxel indices (x, y, z) of the case's image; the
    diameter is in mm either way. A value that is not a number, a negative diameter or
    a non-integer class is E1002 naming the file and line. Read with the `csv` module.
    """
    mode = str(getattr(coords, "name", coords))
    if mode not in ("world", "voxel"):
        raise ValueError(f"coords must be world or voxel, not {mode!r}")
    p, header, rows = _csv_rows(path, _ANNOTATION_COLUMNS)
    has_class = "class" in header
    ids: list[str] = []
    centres: list[list[float]] = []
    diameters: list[float] = []
    classes: list[int] = []
    lines: list[int] = []
    for line, row in rows:
        def number(col: str, line: int = line, row: dict[str, str] = row) -> float:
            try:
                v = float(row[col])
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise DataError("E1002", f"{p}, line {line}: {col} is {row[col]!r}, not a finite number", p)
            return v

        if not row["seriesuid"]:
            raise DataError("E1002", f"{p}, line {line}: the seriesuid is empty", p)
        diameter = number("diameter_mm")
        if diameter < 0:
            raise DataError("E1002", f"{p}, line {line}: diameter_mm is negative ({row['diameter_mm']})", p)
        cls = 1
        if has_class:
            value = number("class")
            if value != int(value) or value < 0:
                raise DataError("E1002", f"{p}, line {line}: class is {row['class']!r}, not an integer >= 0", p)
            cls = int(value)
        ids.append(row["seriesuid"])
        centres.append([number("coordX"), number("coordY"), number("coordZ")])
        diameters.append(diameter)
        classes.append(cls)
        lines.append(line)
    return Annotations(tuple(ids), np.array(centres, dtype=np.float64).reshape(-1, 3),
                       np.array(diameters, dtype=np.float64), np.array(classes, dtype=np.int64), mode, str(p),
                       tuple(lines))


def boxed(images: Volume | DicomSeries, annotations: Annotations, case: str) -> Pair[Volume, Boxes]:
    """One case's image with its annotation rows as `Boxes` in world mm: an object of
    diameter d centred at c is the cube c +- d/2 (aligned with the world axes), score 1.

    In the language `boxed` takes a dataset; the runtime applies it case by case (so no
    more than one scan is in memory) and passes the case id as `case`. Rows are matched
    by that id (the SeriesInstanceUID of `dicom_folder`, the `*` part of `folder`);
    voxel centres are converted with the image's geometry. A case without rows gets
    zero boxes, as a scan without nodules should; that no training case has a box at
    all is found by `train` (E1006). A DICOM series is decoded.

    Example: `io.boxed(io.nifti("scan7.nii.gz"), io.csv_annotations("annotations.csv"), "scan7")`
    """
    vol = dicom_to_image(images) if isinstance(images, DicomSeries) else images
    if not isinstance(vol, Volume) or vol.dim != 3:
        raise ValueError(f"boxed: case {case} is not a 3-D image")
    idx = annotations.rows(case)
    centres = annotations.centres[idx].reshape(-1, 3)
    if annotations.coords == "voxel" and len(idx):
        centres = np.array(vol.origin) + centres @ _index_matrix(vol).T
    half = annotations.diameters[idx].reshape(-1, 1) / 2.0
    return Pair(vol, Boxes(centres - half, centres + half, annotations.classes[idx], np.ones(len(idx)),
                           source=annotations.source))


_BOX_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "sizeX", "sizeY", "sizeZ", "class",
                "probability")


def _boxes_of(value: object, what: str) -> Boxes:
    if isinstance(value, Pair):
        value = value.target
    if not isinstance(value, Boxes):
        raise TypeError(f"{what}: cannot write a {type(value).__name__} as boxes")
    return value


def _stem(source: str | None) -> str:
    if not source:
        return ""
    name = Path(source).name
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".csv"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def write_boxes(x: Boxes | Sequence[Case[Boxes]], path: PathLike, case: str | None = None) -> list[Path]:
    """Write boxes as one CSV table in the LUNA16 submission layout, every case of a
    dataset in the same file: `seriesuid` (the case id: `case` for a single Boxes, which
    the runtime passes when it writes a dataset case by case, else the stem of its source
    file), `coordX`, `coordY`, `coordZ` (box centre, world mm), `diameter_mm`
    (the mean of the box's extents: exact for the cubes of `boxed`), `sizeX`, `sizeY`,
    `sizeZ` (the extents, so the box is kept exactly), `class`, `probability` (the
    score). 2-D boxes leave the z columns empty. Numbers are written to round-trip
    exactly; the file is written atomically (a temporary file renamed into place), with
    `.csv` added when the name has no extension of its own. Written with the `csv`
    module. Returns the file written."""
    if isinstance(x, Sequence) and not isinstance(x, (str, bytes)) and all(isinstance(c, Case) for c in x):
        items = [(c.id, _boxes_of(c.value, f"case {c.id}")) for c in x]
    else:
        b = _boxes_of(x, "write_boxes")
        items = [(case if case is not None else _stem(b.source), b)]
    target = outputs.with_suffix("write_boxes", Path(path))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(_BOX_COLUMNS)
            for cid, b in items:
                for i in range(len(b)):
                    centre = (b.lo[i] + b.hi[i]) / 2.0
                    extent = b.hi[i] - b.lo[i]
                    pad = [""] * (3 - b.dim)
                    w.writerow([outputs.csv_text(cid), *(float(v) for v in centre), *pad, float(np.mean(extent)),
                                *(float(v) for v in extent), *pad, int(b.classes[i]), float(b.scores[i])])

    return outputs.commit(target, write)


# ===== whole-slide images =====================================================================


@functools.lru_cache(maxsize=4)
def _slide(path: str, stamp: tuple[int, int]) -> object:
    """An open OpenSlide handle, kept for the tiles of one slide (`stamp`, the file's size
    and mtime, makes a changed file reopen)."""
    import openslide

    try:
        return openslide.OpenSlide(path)
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as exc:
        raise DataError("E1002", f"cannot read {path} as a whole-slide image: {exc}", path,
                        help="OpenSlide reads tiled pyramidal TIFF, SVS, NDPI, MRXS, ... files") from exc


def _open_slide(path: PathLike) -> object:
    p = _existing_file(path)
    st = p.stat()
    return _slide(str(p), (st.st_size, st.st_mtime_ns))


def _saturation(rgba: np.ndarray) -> np.ndarray:
    """HSV saturation in 0..1; transparent pixels (outside the scanned area) 0."""
    rgb = rgba[..., :3].astype(np.float64)
    hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
    sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-12), 0.0)
    if rgba.shape[-1] == 4:
        sat[rgba[..., 3] == 0] = 0.0
    return sat


def _tissue_mask(slide: object) -> tuple[np.ndarray, float, float]:
    """Tissue at the slide's lowest resolution (read whole when at most 2048 pixels on a
    side, else a 2048-pixel thumbnail): saturation above its Otsu threshold. Returns the
    mask and its downsample (x, y) from level 0."""
    from skimage.filters import threshold_otsu

    w0, h0 = slide.level_dimensions[0]
    last = slide.level_count - 1
    lw, lh = slide.level_dimensions[last]
    if max(lw, lh) <= 2048:
        rgba = np.asarray(slide.read_region((0, 0), last, (lw, lh)))
    else:
        rgba = np.asarray(slide.get_thumbnail((2048, 2048)).convert("RGB"))
    sat = _saturation(rgba)
    if float(sat.max() - sat.min()) < 1e-6:
        mask = sat > 0.1  # one saturation everywhere: no threshold to find
    else:
        mask = sat > threshold_otsu(sat)
    return mask, w0 / mask.shape[1], h0 / mask.shape[0]


def slide_tiles(path: PathLike, size: Sequence[int] = (512, 512), level: int = 0,
                tissue: float = 0.5) -> list[Case[Volume]]:
    """A whole-slide image as a dataset of RGB tiles, read with OpenSlide.

    The tiles of `size` pixels (x, y) on a grid over pyramid `level` (0 = full
    resolution); case ids `r<row>_c<col>` (zero-padded, so in raster order). A tile is
    kept when the fraction of its area that is tissue is at least `tissue`; tissue is
    found at the lowest resolution of the pyramid, as the pixels whose HSV saturation
    is above its Otsu threshold (glass is grey or white, stained tissue coloured). Edge
    tiles are padded to `size` with white (255, glass); the padding counts as no tissue.
    Each tile is a 2-D uint8 RGB Volume of modality `Path` with spacing from the
    slide's microns per pixel (`openslide.mpp-x/y`) times the level's downsample, in mm,
    or 1 mm per level-0 pixel without it; its origin is its top-left pixel centre.
    E1005 when no tile has enough tissue or the slide has no such level.
    """
    return _eager("slide_tiles", path=path, size=size, level=level, tissue=tissue)


def _list_slide_tiles(path: PathLike, size: Sequence[int] = (512, 512), level: int = 0,
                      tissue: float = 0.5) -> list[CaseSpec]:
    tw, th = (int(v) for v in size)
    if tw < 1 or th < 1 or not 0.0 <= float(tissue) <= 1.0:
        raise ValueError("slide_tiles needs a positive tile size and a tissue fraction in 0..1")
    p = _existing_file(path)
    slide = _open_slide(p)
    levels = slide.level_count
    if not 0 <= int(level) < levels:
        sizes = ", ".join(f"{i}: {w}x{h}" for i, (w, h) in enumerate(slide.level_dimensions))
        raise DataError("E1005", f"{p} has no pyramid level {level}; its levels are {sizes}", p)
    level = int(level)
    lw, lh = slide.level_dimensions[level]
    ds = float(slide.level_downsamples[level])
    mask, mx, my = _tissue_mask(slide)
    specs = []
    for row in range(math.ceil(lh / th)):
        for col in range(math.ceil(lw / tw)):
            x, y = col * tw, row * th
            vw, vh = min(tw, lw - x), min(th, lh - y)
            # the tile's area on the mask: pixels whose centres fall inside it
            xa, xb = (int(math.floor(v * ds / mx + 0.5)) for v in (x, x + vw))
            ya, yb = (int(math.floor(v * ds / my + 0.5)) for v in (y, y + vh))
            xb, yb = max(xb, xa + 1), max(yb, ya + 1)
            covered = mask[ya:yb, xa:xb]
            fraction = float(covered.mean()) * (vw * vh) / (tw * th) if covered.size else 0.0
            if fraction >= float(tissue):
                specs.append(CaseSpec(f"r{row:05d}_c{col:05d}", (str(p),),
                                      {"path": str(p), "level": level, "x": int(round(x * ds)),
                                       "y": int(round(y * ds)), "size": [tw, th], "valid": [vw, vh]}))
    if not specs:
        raise DataError("E1005", f"no tile of {p} at level {level} is at least {float(tissue):.0%} tissue", p,
                        help="lower `tissue` (0 keeps every tile), or check that this is a stained slide")
    return specs


def _load_slide_tile(spec: CaseSpec) -> Volume:
    import openslide

    a = spec.args
    path, level = str(a["path"]), int(a["level"])
    tw, th = (int(v) for v in a["size"])
    vw, vh = (int(v) for v in a["valid"])
    x, y = int(a["x"]), int(a["y"])
    slide = _open_slide(path)
    try:
        rgba = np.asarray(slide.read_region((x, y), level, (vw, vh)))
    except openslide.OpenSlideError as exc:
        _slide.cache_clear()  # an OpenSlide handle is unusable after an error
        raise DataError("E1002", f"cannot read tile {spec.id} of {path}: {exc}", path,
                        help="the slide may be corrupt or truncated") from exc
    tile = np.full((th, tw, 3), 255, dtype=np.uint8)
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255  # outside the scanned area: glass
    tile[:vh, :vw] = rgb
    ds = float(slide.level_downsamples[level])
    props = slide.properties
    try:
        mpp = (float(props["openslide.mpp-x"]) / 1000.0, float(props["openslide.mpp-y"]) / 1000.0)
    except (KeyError, ValueError):
        mpp = (1.0, 1.0)
    spacing = (mpp[0] * ds, mpp[1] * ds)
    origin = (x * mpp[0] + (spacing[0] - mpp[0]) / 2.0, y * mpp[1] + (spacing[1] - mpp[1]) / 2.0)
    return Volume(tile, spacing, origin, _identity(2), "image", "Path", path)


OPERATORS: dict[str, Callable[..., object]] = {
    "nifti": nifti, "nrrd": nrrd, "mha": mha, "png": png, "tiff": tiff, "jpeg": jpeg, "numpy": numpy,
    "dicom_file": dicom_file, "dicom_seg": dicom_seg, "dicom_series": dicom_series, "dicom_to_image": dicom_to_image,
    "dicom_folder": dicom_folder, "folder": folder, "instance_folder": instance_folder, "images": images,
    "pair_input": pair_input, "phantom": phantom, "atrophy_phantom": atrophy_phantom, "datalist": datalist,
    "write_nifti": write_nifti, "write_nrrd": write_nrrd, "write_mha": write_mha, "write_png": write_png,
    "one_hot": one_hot, "onehot_to_labels": onehot_to_labels, "instances_to_labels": instances_to_labels,
    "labels_to_instances": labels_to_instances, "boxes_to_mask": boxes_to_mask, "mask_to_boxes": mask_to_boxes,
    "classified": classified, "csv_annotations": csv_annotations, "boxed": boxed, "slide_tiles": slide_tiles,
    "write_boxes": write_boxes, "stacked_classified": stacked_classified, "stacked_labels": stacked_labels,
    "mask_folder": mask_folder,
}
"""The std.io operators implemented here, by the name of their stdlib signature."""


@dataclass(frozen=True)
class Source:
    """A source operator in two phases, for an executor that reads cases lazily.

    `list(**params)` takes the operator's keyword arguments and returns its cases as
    `CaseSpec`s ordered by id, cheaply: file names, pairing, DICOM headers, a CSV table,
    a slide's low-resolution level; it raises the operator's DataErrors about the
    dataset as a whole (E1005 nothing found, E1006 unpaired, ...). `load(spec)` reads one
    case and returns exactly the value the eager operator gives for it, raising a
    DataError naming the file when that case's data is bad (E1002 corrupt, E1007 image
    and label grids differ, ...). `spec.files` are the files `load` reads and
    `spec.args` plain JSON, so a worker process can load a case from a spec alone.
    """

    list: Callable[..., list[CaseSpec]]
    load: Callable[[CaseSpec], object]


SOURCES: dict[str, Source] = {
    "folder": Source(lambda root, image, label=None: _list_paired(root, image, label, "labels"), _load_paired),
    "instance_folder": Source(lambda root, image, label: _list_paired(root, image, label, "instances"),
                              _load_paired),
    "images": Source(_list_images, _load_image),
    "dicom_folder": Source(_list_dicom_folder, _load_dicom_series),
    "phantom": Source(_list_phantom, _load_phantom),
    "atrophy_phantom": Source(_list_atrophy_phantom, _load_atrophy_phantom),
    "classified": Source(_list_classified, _load_classified),
    "slide_tiles": Source(_list_slide_tiles, _load_slide_tile),
    "datalist": Source(_list_datalist, _load_paired),
    "stacked_classified": Source(lambda path, images="images", labels="labels": _list_stacked(path, images, labels, False),
                                 _load_stacked),
    "stacked_labels": Source(lambda path, images="images", labels="labels": _list_stacked(path, images, labels, True),
                             _load_stacked),
    "mask_folder": Source(_list_mask_folder, _load_mask_folder),
}
"""The source operators (those that make a `Dataset`) in two phases, by operator name;
the eager operators of the same names are `[Case(s.id, load(s)) for s in list(...)]`."""
