"""Read CT volumes into one canonical patient orientation, keeping the original geometry.

Canonical orientation: the numpy array is indexed ``[z, y, x]`` with x pointing to the
patient's Left, y to Posterior and z to Superior (ITK's LPS, identity direction). Axial
slices therefore run feet to head and every slice is displayed in radiological convention.
Reorientation only permutes and flips axes (no resampling), so results computed on the
canonical array map back onto the input grid exactly with :meth:`Volume.to_original`.
"""

from __future__ import annotations

import errno
import functools
import gzip
import os
import re
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .dicom_series import image_header, read_series_files
from .volume_checks import VolumeError, first_line, require_orthogonal

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

# Converts LPS (ITK) coordinates to RAS (Slicer) coordinates and back.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of an image as stored: ITK index order (i, j, k), LPS world coordinates."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3 row-major; column c is the world direction of index axis c

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Geometry:
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def ijk_to_lps(self) -> np.ndarray:
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def ijk_to_ras(self) -> np.ndarray:
        """The 4x4 matrix Slicer stores on a volume node."""
        matrix = self.ijk_to_lps()
        matrix[:3] = LPS_TO_RAS @ matrix[:3]
        return matrix

    @classmethod
    def from_ijk_to_ras(cls, matrix: np.ndarray, size: tuple[int, int, int], source: str = "") -> Geometry:
        """The geometry of a Slicer volume node's IJK-to-RAS matrix; a sheared one is refused, naming
        ``source`` (the node)."""
        source = source or "IJK-to-RAS matrix"
        lps = np.asarray(matrix, dtype=float)[:3].copy()
        lps = LPS_TO_RAS @ lps
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        if np.any(spacing <= 0):
            raise VolumeError(f"{source}: IJK-to-RAS matrix has a zero-length axis: "
                              f"{np.asarray(matrix).tolist()}")
        direction = lps[:3, :3] / spacing
        require_orthogonal(direction, source)
        return cls(
            size=tuple(int(s) for s in size),
            spacing=tuple(float(s) for s in spacing),
            origin=tuple(float(o) for o in lps[:3, 3]),
            direction=tuple(float(d) for d in direction.ravel()),
        )

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, data: dict) -> Geometry:
        return cls(tuple(data["size"]), tuple(data["spacing"]), tuple(data["origin"]), tuple(data["direction"]))


def canonical_axes(direction: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """For each LPS axis, the index axis closest to it and whether it runs backwards.

    Oblique directions are assigned greedily by the largest cosine, so every index axis is
    used exactly once even for 45-degree obliques.
    """
    cosines = np.abs(direction)
    source = [-1, -1, -1]
    for _ in range(3):
        world, index = np.unravel_index(np.argmax(cosines), cosines.shape)
        source[world] = int(index)
        cosines[world, :] = -1
        cosines[:, index] = -1
    flips = tuple(bool(direction[world, source[world]] < 0) for world in range(3))
    return tuple(source), flips


@dataclass
class Volume:
    """Voxel values (HU) in canonical ``[z, y, x]`` order plus what is needed to map back."""

    array: np.ndarray
    spacing_zyx: tuple[float, float, float]
    geometry: Geometry
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return study_name(self.source) if self.source else "volume"

    @classmethod
    def from_original(cls, array_kji: np.ndarray, geometry: Geometry, source: str = "",
                      warnings: list[str] | None = None) -> Volume:
        """Build from an array in storage order (numpy ``[k, j, i]``, as SimpleITK and Slicer give it)."""
        source_axes, flips = canonical_axes(geometry.direction_matrix)
        # numpy axis n of the canonical array is LPS axis 2 - n; its source numpy axis is 2 - source_axis.
        order = [2 - source_axes[2 - n] for n in range(3)]
        canonical = np.transpose(array_kji, order)
        flip_axes = [n for n in range(3) if flips[2 - n]]
        if flip_axes:
            canonical = np.flip(canonical, axis=flip_axes)
        spacing_zyx = tuple(float(geometry.spacing[source_axes[2 - n]]) for n in range(3))
        return cls(canonical, spacing_zyx, geometry, source, list(warnings or []))

    def to_original(self, canonical: np.ndarray) -> np.ndarray:
        """Map an array on the canonical grid (e.g. the lesion map) back to storage order ``[k, j, i]``."""
        return canonical_to_original(canonical, self.geometry)

    def to_original_slices(self, values_z: np.ndarray) -> np.ndarray | None:
        """Reorder per-axial-slice values (canonical z, feet to head) into the input's own slice order.

        Returns None when the input's slice axis is not the axial one (e.g. a sagittal
        acquisition), in which case the input has no axial slices of its own.
        """
        source_axes, flips = canonical_axes(self.geometry.direction_matrix)
        if source_axes[2] != 2:
            return None
        values_z = np.asarray(values_z)
        return values_z[::-1].copy() if flips[2] else values_z.copy()

    def input_slice_index(self) -> np.ndarray | None:
        """For each canonical axial slice (feet to head), its index among the input's own slices;
        None when the input's slices are not axial."""
        order = self.to_original_slices(np.arange(self.array.shape[0]))
        return None if order is None else np.argsort(order)


def stored_flipped(volume: Volume, flips_kji: tuple[bool, bool, bool]) -> Volume:
    """The same CT stored with some index axes reversed (RAS rather than LPS, feet first...): the same
    anatomy in the same place, another storage order, as scanners and converters write it."""
    array = volume.to_original(volume.array)
    geometry = volume.geometry
    direction = np.array(geometry.direction).reshape(3, 3).copy()
    origin = np.array(geometry.origin, dtype=float)
    for axis_ijk, flip in enumerate(flips_kji[::-1]):
        if flip:
            origin += direction[:, axis_ijk] * geometry.spacing[axis_ijk] * (geometry.size[axis_ijk] - 1)
            direction[:, axis_ijk] *= -1
            array = np.flip(array, axis=2 - axis_ijk)
    flipped = Geometry(geometry.size, geometry.spacing, tuple(origin), tuple(direction.ravel()))
    return Volume.from_original(np.ascontiguousarray(array), flipped, volume.source)


def canonical_to_original(canonical: np.ndarray, geometry: Geometry) -> np.ndarray:
    """An array on the canonical grid of a volume with ``geometry``, in that volume's storage order."""
    source_axes, flips = canonical_axes(geometry.direction_matrix)
    flip_axes = [n for n in range(3) if flips[2 - n]]
    if flip_axes:
        canonical = np.flip(canonical, axis=flip_axes)
    order = [2 - source_axes[2 - n] for n in range(3)]
    return np.ascontiguousarray(np.transpose(canonical, np.argsort(order)))


def study_name(path: str | os.PathLike) -> str:
    """File name without volume extension, or a folder's name (DICOM series)."""
    p = Path(path)
    for suffix in sorted(VOLUME_SUFFIXES + (".dcm",), key=len, reverse=True):
        if p.name.lower().endswith(suffix):
            return p.name[: -len(suffix)]
    return p.name


def unique_stem(name: str, used: set[str], fallback: str = "volume") -> str:
    """A portable file-name stem from any name, made unique (case-insensitively) against ``used``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or fallback
    unique, number = stem, 2
    while unique.lower() in used:
        unique, number = f"{stem}_{number}", number + 1
    used.add(unique.lower())
    return unique


def has_volume_suffix(path: Path) -> bool:
    """Whether ``path``'s name ends in one of ``VOLUME_SUFFIXES`` (any case): what marks a volume file."""
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def is_hidden(path: Path) -> bool:
    """A dot file or folder: never a study (macOS writes ``._study.nii.gz`` beside ``study.nii.gz`` on
    foreign disks, and our own temporaries start with a dot)."""
    return path.name.startswith(".")


def _subfolders_with_volumes(folder: Path) -> list[str]:
    """Names of ``folder``'s sub-folders that hold volume files (unreadable ones are skipped)."""
    names = []
    for sub in sorted(folder.iterdir()):
        try:
            if sub.is_dir() and any(map(has_volume_suffix, sub.iterdir())):
                names.append(sub.name)
        except OSError:
            continue
    return names


def _read_dicom_series(folder: Path, allow_uneven_slices: bool) -> tuple[sitk.Image, list[str]]:
    """The folder's largest DICOM series, its slices where they lie (``dicom_series.read_series_files``)."""
    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        holding = _subfolders_with_volumes(folder)
        hint = (f" Its sub-folders {', '.join(holding[:5])}{' ...' if len(holding) > 5 else ''} hold volume files: "
                f"pass them instead (for a MosMed-style folder, {folder}/CT-*).") if holding else ""
        raise VolumeError(
            f"{folder}: no DICOM series found in this folder. Pass a folder holding the .dcm files of one "
            f"CT series, or a volume file ({', '.join(VOLUME_SUFFIXES)}).{hint}"
        )
    files_by_series = {sid: reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    chosen = max(series_ids, key=lambda sid: len(files_by_series[sid]))
    warnings = []
    if len(series_ids) > 1:
        warnings.append(
            f"{folder}: {len(series_ids)} DICOM series found; using the one with the most slices "
            f"({len(files_by_series[chosen])} files, series {chosen})."
        )
    image, more_warnings = read_series_files(folder, list(files_by_series[chosen]), allow_uneven_slices)
    return image, warnings + more_warnings


def _nifti_endian(header: bytes) -> str | None:
    """The byte order ("<" or ">") of a NIfTI-1 header (its first field, sizeof_hdr, is 348), or None."""
    return next((endian for endian in "<>"
                 if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348), None)


def _nifti_payload(header: bytes) -> int | None:
    """Bytes a whole NIfTI-1 file holds (header, extensions, voxels), from its first 348 bytes."""
    endian = _nifti_endian(header)
    if endian is None:
        return None
    dims = struct.unpack(endian + "8h", header[40:56])
    bitpix = struct.unpack(endian + "h", header[72:74])[0]
    vox_offset = struct.unpack(endian + "f", header[108:112])[0]
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or min(dims[1: dims[0] + 1]) < 1:
        return None
    return int(vox_offset) + int(np.prod(dims[1: dims[0] + 1], dtype=np.int64)) * bitpix // 8


def _nifti_header(path: Path) -> bytes:
    """A NIfTI file's first 348 bytes (decompressed for .nii.gz); fewer when it is shorter or unreadable."""
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as stream:
            return stream.read(348)
    except (EOFError, OSError, zlib.error):
        return b""


def _nifti_gz_payload(path: Path) -> int | None:
    return _nifti_payload(_nifti_header(path))


def _nifti_sform(header: bytes) -> np.ndarray | None:
    """The 3x3 voxel-to-world part of a NIfTI-1 header's sform, when the header declares one (sform_code > 0).

    ITK reads the qform instead when the sform is sheared (or refuses the file when there is no qform),
    so a tilted gantry's NIfTI (dcm2niix without tilt correction) would lose its slant silently."""
    endian = _nifti_endian(header)
    if endian is None or struct.unpack(endian + "h", header[254:256])[0] <= 0:
        return None
    return np.array(struct.unpack(endian + "12f", header[280:328]), dtype=float).reshape(3, 4)[:, :3]


def _check_gzip_complete(path: Path) -> None:
    """ITK reads a truncated .gz without complaint (the missing voxels come back as zeros), so check
    that the compressed stream is whole before trusting it.

    For NIfTI the gzip trailer's length field must equal what the header says the file holds: a
    constant-time check. Anything else (or a mismatch, to name the fault) decompresses the whole stream.
    """
    with open(path, "rb") as raw:
        if raw.read(2) != b"\x1f\x8b":
            return  # not gzip at all: the image reader's own error says so
        raw.seek(-4, os.SEEK_END)
        trailer_size = struct.unpack("<I", raw.read(4))[0]
    payload = _nifti_gz_payload(path) if path.name.lower().endswith(".nii.gz") else None
    if payload is not None and payload % 2**32 == trailer_size:
        return
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as error:
        raise VolumeError(
            f"{path}: the compressed file is incomplete or corrupt ({error}); it was probably cut off while "
            f"copying or downloading. Copy it again from its source."
        ) from None


def _read_file(path: Path) -> sitk.Image:
    if not path.name.lower().endswith(VOLUME_SUFFIXES + (".dcm",)):
        raise VolumeError(
            f"{path}: unsupported file type. Use NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage "
            f"(.mha, .mhd) or a folder holding a DICOM series."
        )
    if path.name.lower().endswith(".gz"):
        _check_gzip_complete(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        sform = _nifti_sform(_nifti_header(path))
        if sform is not None and np.isfinite(sform).all() and np.linalg.norm(sform, axis=0).min() > 0:
            require_orthogonal(sform, str(path))
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise VolumeError(
            f"{path}: cannot be read as an image ({first_line(error)}). The file may be truncated, "
            f"corrupt, or not really a {study_suffix(path)} file; re-export it from its source."
        ) from None


def study_suffix(path: Path) -> str:
    return path.name[len(study_name(path)):] or "volume"


def _check_image(image: sitk.Image, path: Path) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} values per voxel (colour or vector image); "
            f"TwoFiveCNN needs a greyscale CT volume in Hounsfield units."
        )
    dimension = image.GetDimension()
    if dimension == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dimension = 3
    if dimension == 2:
        raise VolumeError(
            f"{path}: is a 2D image; TwoFiveCNN needs a 3D CT volume (a stack of axial slices). "
            f"Pass the whole series (a DICOM folder or a 3D NIfTI/NRRD file)."
        )
    if dimension != 3:
        raise VolumeError(
            f"{path}: is a {dimension}D image (size {image.GetSize()}); TwoFiveCNN needs one 3D CT volume. "
            f"Extract a single 3D frame first."
        )
    if min(image.GetSize()) < 1 or image.GetSize()[0] < 8 or image.GetSize()[1] < 8:
        raise VolumeError(f"{path}: image size {image.GetSize()} is too small to be a CT volume; TwoFiveCNN "
                          f"needs slices of at least 8 x 8 pixels.")
    return image


def read_image(path: str | os.PathLike, *, allow_uneven_slices: bool = False) -> tuple[sitk.Image, list[str]]:
    """Read a volume file or a DICOM series folder as a checked 3D SimpleITK image on a square grid.

    A sheared grid (a tilted gantry's) is refused. So is a DICOM series whose slices are not evenly
    spaced, unless ``allow_uneven_slices``: it is then resampled onto an even grid, with a warning
    (:func:`.dicom_series.read_series_files`).
    """
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"{p}: no such file or folder.")
    if p.is_dir():
        image, warnings = _read_dicom_series(p, allow_uneven_slices)
    else:
        image, warnings = _read_file(p), []
    image = _check_image(image, p)
    require_orthogonal(np.reshape(image.GetDirection(), (3, 3)), str(p))
    return image, warnings


def _header(path: Path) -> sitk.ImageFileReader | None:
    """A volume file's header read (size, spacing, origin, direction; no voxels), or None for folders,
    other files and unreadable headers."""
    return image_header(path) if path.is_file() and has_volume_suffix(path) else None


def voxel_count(path: str | os.PathLike) -> int | None:
    """Voxels of a volume file from its header alone (cheap); None for folders and unreadable files."""
    header = _header(Path(path))
    return None if header is None else int(np.prod(header.GetSize(), dtype=np.int64))


def stored_geometry(path: str | os.PathLike) -> Geometry:
    """A study's grid as stored: from a 3D scalar volume file's header alone (cheap), else (a DICOM
    folder, another kind of file) by reading it."""
    header = _header(Path(path))
    if header is not None and header.GetDimension() == 3 and header.GetNumberOfComponents() == 1:
        return Geometry.from_sitk(header)
    return read_volume(path).geometry


def read_volume(path: str | os.PathLike, *, allow_uneven_slices: bool = False) -> Volume:
    """Read NIfTI, NRRD, MetaImage or a DICOM series folder into a canonical :class:`Volume`.

    Voxel values are in the units the file declares, with DICOM rescale and NIfTI scaling
    applied (Hounsfield units for CT). Integer voxels keep their type to save memory. Sheared grids
    and unevenly spaced DICOM slices are refused (see :func:`read_image` for ``allow_uneven_slices``).
    """
    image, warnings = read_image(path, allow_uneven_slices=allow_uneven_slices)
    array = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(array.dtype, np.integer) and not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    return Volume.from_original(np.array(array), Geometry.from_sitk(image), str(path), warnings)


def image_from_original(array_kji: np.ndarray, geometry: Geometry) -> sitk.Image:
    return geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array_kji), isVector=False))


# Maps in [0, 1] (the lesion map, probabilities) are stored as uint8 steps of this size: a quarter of the
# float32 file, written and read faster, and within half a step of the value computed.
PROBABILITY_STEP = 1 / 255
FAST_COMPRESSION = 1  # zlib level: milliseconds for a mostly-empty map, within a few % of level 6's size


def write_probability_volume(values_kji: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> Path:
    """Write values in [0, 1] as uint8 steps of :data:`PROBABILITY_STEP`, atomically.

    NIfTI files carry the step as their ``scl_slope``, so every NIfTI reader (Slicer, ITK, nibabel)
    gets floats in [0, 1] back. NRRD has no scale field: its voxels read 0..255 and the header's
    ``twofivecnn_value_step`` and the prediction JSON give the step. ITK writes the header (of a
    one-voxel image on the same geometry, so orientation follows ITK's conventions); the voxels are
    converted and compressed a slab at a time, so no whole-volume copy is made.
    """
    values_kji = np.asarray(values_kji)
    path = Path(path)
    name = path.name.lower()
    kind = ".nii.gz" if name.endswith(".nii.gz") else ".nii" if name.endswith(".nii") else ".nrrd"
    if not name.endswith(kind):
        raise ValueError(f"{path}: probability volumes are written as .nii.gz, .nii or .nrrd")
    header = _probability_header(values_kji.shape, geometry, kind)
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as raw:
                if kind == ".nrrd":
                    raw.write(header)
                compressed = kind != ".nii"
                out = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=FAST_COMPRESSION, mtime=0) \
                    if compressed else raw
                if kind != ".nrrd":
                    out.write(header)
                for start in range(0, values_kji.shape[0], 16):
                    out.write(memoryview(_probability_steps(values_kji[start: start + 16])).cast("B"))
                if compressed:
                    out.close()
            if kind == ".nii.gz":
                _check_gzip_complete(tmp)
        except (OSError, VolumeError) as error:
            free = shutil.disk_usage(tmp.parent).free // 2**20
            raise OSError(getattr(error, "errno", None) or errno.EIO,
                          f"{path}: the volume could not be written whole ({free} MB free on that disk); "
                          f"free some space or write elsewhere") from None
    return path


@functools.cache
def _float16_steps() -> np.ndarray:
    """The uint8 step of every float16 bit pattern (NaN as 0): float16 maps convert by table lookup,
    exactly as by arithmetic and without a float32 copy."""
    values = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)
    return np.rint(np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * 255).astype(np.uint8)


def _probability_steps(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped; NaN as 0) as contiguous uint8 steps of :data:`PROBABILITY_STEP`."""
    values = np.ascontiguousarray(values)
    if values.dtype == np.float16:
        return _float16_steps()[values.view(np.uint16)]
    steps = np.empty(values.shape, dtype=np.uint8)
    floats = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    np.rint(np.clip(floats, 0.0, 1.0, out=floats) * 255, out=steps, casting="unsafe")
    return steps


def _probability_header(shape_kji: tuple[int, ...], geometry: Geometry, kind: str) -> bytes:
    """ITK's header for a uint8 volume of ``shape_kji`` on ``geometry``, with the value step recorded."""
    one_voxel = sitk.Image(1, 1, 1, sitk.sitkUInt8)
    Geometry((1, 1, 1), geometry.spacing, geometry.origin, geometry.direction).apply_to(one_voxel)
    size_ijk = tuple(int(n) for n in shape_kji[::-1])
    with tempfile.TemporaryDirectory() as folder:
        written = Path(folder) / ("header.nrrd" if kind == ".nrrd" else "header.nii")
        if kind == ".nrrd":
            one_voxel.SetMetaData("twofivecnn_value_step", repr(PROBABILITY_STEP))
        sitk.WriteImage(one_voxel, str(written), kind == ".nrrd")
        data = written.read_bytes()
    if kind == ".nrrd":
        header = data[: data.index(b"\n\n") + 2].decode("latin-1")
        header = re.sub(r"(?m)^sizes: .*$", "sizes: " + " ".join(map(str, size_ijk)), header)
        if "encoding: gzip" not in header:
            raise VolumeError("ITK wrote an NRRD header without gzip encoding")
        return header.encode("latin-1")
    endian = "<" if struct.unpack("<i", data[:4])[0] == 348 else ">"
    vox_offset = int(struct.unpack(endian + "f", data[108:112])[0])
    header = bytearray(data[:vox_offset])
    header[40:48] = struct.pack(endian + "4h", 3, *size_ijk)
    header[112:120] = struct.pack(endian + "2f", PROBABILITY_STEP, 0.0)  # scl_slope, scl_inter
    return bytes(header)


def write_volume(array_kji: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> Path:
    """Write an array in storage order with the given geometry, atomically (format from the extension).

    The file is checked before it replaces ``path``: ITK's NIfTI writer leaves a short file without
    raising when the disk fills up.
    """
    image = image_from_original(array_kji, geometry)
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
            if tmp.name.endswith(".gz"):
                _check_gzip_complete(tmp)
            else:
                sitk.ReadImage(str(tmp))
        except (RuntimeError, VolumeError):
            free = shutil.disk_usage(tmp.parent).free // 2**20
            raise OSError(errno.EIO, f"{path}: the volume could not be written whole ({free} MB free on "
                                     f"that disk); free some space or write elsewhere") from None
    return Path(path)
