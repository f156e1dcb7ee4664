"""Plain helpers shared by several test modules: writers of test images, the tiny training settings, the
extension's files read as text, MRML look-ups and process checks.

Fixtures live in conftest.py, which pytest injects by name; what a test calls itself lives here and is
imported by name (``from helpers import ...``), as pytest advises against importing conftest.py. Nothing
here imports torch or slicer at import time: the torch-blocked child of test_first_run_torch.py loads it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from TwoFiveCNNLib.io.progress import ProgressReporter
from TwoFiveCNNLib.io.volume import Geometry, Volume, write_volume

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("TwoFiveCNN", "TwoFiveCNNTraining")


# --- test images ---------------------------------------------------------------------------------


def asymmetric_anatomy(shape: tuple[int, int, int] = (12, 40, 48), seed: int = 0) -> np.ndarray:
    """An int16 volume with no symmetry, so any wrong flip or permutation changes it."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 1000, size=shape).astype(np.int16)


def sitk_image(array_zyx: np.ndarray, spacing=(0.7, 0.8, 2.5), origin=(-10.0, 20.0, 30.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def write_dicom_series(folder: Path, stored_values: np.ndarray, intercept: float, slope: float,
                       spacing=(0.75, 0.75, 2.0), series_uid: str | None = None, feet_first: bool = False,
                       positions: Sequence[Sequence[float]] | None = None) -> list[Path]:
    """A CT series written slice by slice with pydicom, raw values plus a rescale to HU; axial slices
    ``spacing[2]`` apart, or at the ImagePositionPatient given per slice in ``positions``."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    n = stored_values.shape[0]
    written = []
    for k in range(n):
        z = (n - 1 - k if feet_first else k) * spacing[2]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "CT", "TEST"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, study_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = list(positions[k]) if positions is not None else [-100.0, -120.0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = stored_values.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = intercept, slope
        ds.PixelData = stored_values[k].astype(np.uint16).tobytes()
        written.append(folder / f"slice_{k:03d}.dcm")
        ds.save_as(written[-1], enforce_file_format=True)
    return written


# --- tiny training runs --------------------------------------------------------------------------


TINY_TRAIN_ARGS = ["--in-plane", "48", "--slices", "12", "--stage1-epochs", "1", "--stage2-epochs", "4",
                   "--stage2-views", "2", "--lesion-epochs", "2", "--quiet"]


class StopAfter(ProgressReporter):
    """A quiet reporter that interrupts training after stage-1 epoch ``epoch``, as a crash would."""

    def __init__(self, epoch: int) -> None:
        super().__init__(quiet=True)
        self.epoch = epoch

    def event(self, stage, **fields):
        record = super().event(stage, **fields)
        if stage == "stage1" and fields.get("epoch") == self.epoch:
            raise KeyboardInterrupt
        return record


# --- the extension's files, read as text ---------------------------------------------------------


def cmake_commands(path: Path) -> list[tuple[str, list[str]]]:
    """``(command, arguments)`` of every CMake command in a file; quoted arguments keep their quotes."""
    text = path.read_text(encoding="utf-8")
    token = re.compile(r'"(?:[^"\\]|\\.)*"|#[^\n]*|[()]|[^\s()#"]+')
    commands, name, arguments, depth, previous = [], None, [], 0, None
    for match in token.finditer(text):
        word = match.group(0)
        if word.startswith("#"):
            continue
        if name is None:
            if word == "(" and previous is not None and re.fullmatch(r"\w+", previous):
                name, arguments, depth = previous, [], 1
            previous = word
            continue
        if word == "(":
            depth += 1
        elif word == ")":
            depth -= 1
            if depth == 0:
                commands.append((name, arguments))
                name, previous = None, None
                continue
        if depth >= 1 and word not in "()":
            arguments.append(word)
    return commands


def cmake_variables(path: Path) -> dict[str, list[str]]:
    """Values of ``set(NAME ...)`` with ``${MODULE_NAME}`` expanded and quotes stripped."""
    values: dict[str, list[str]] = {}
    for command, arguments in cmake_commands(path):
        if command.lower() == "set" and arguments:
            values[arguments[0]] = [a.strip('"') for a in arguments[1:]]
    module_name = values.get("MODULE_NAME", [""])[0]
    return {name: [v.replace("${MODULE_NAME}", module_name) for v in value] for name, value in values.items()}


def module_tree(module: str) -> ast.Module:
    path = ROOT / module / f"{module}.py"
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def find_class(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found")


def parent_assignments(module: str) -> dict[str, ast.expr]:
    """``self.parent.<attribute> = <value>`` in the module class's ``__init__``."""
    init = next(n for n in find_class(module_tree(module), module).body
                if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assigned = {}
    for node in ast.walk(init):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute)
                        and target.value.attr == "parent"):
                    assigned[target.attr] = node.value
    return assigned


def load_module(module: str):
    """A Slicer module file loaded as Slicer loads it (under the ``slicer_stubbed`` fixture's stand-ins)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_slicer_module_{module}", ROOT / module / f"{module}.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


# --- MRML (slicer-core) --------------------------------------------------------------------------


def oblique(ijk_to_ras: np.ndarray, degrees: float = 20.0) -> np.ndarray:
    """The same grid tilted about two axes, so no index axis stays aligned with RAS."""
    a, b = np.radians(degrees), np.radians(degrees / 2)
    about_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    tilted = ijk_to_ras.copy()
    tilted[:3, :3] = about_x @ about_z @ ijk_to_ras[:3, :3]
    return tilted


def add_chest_node(volume: Volume, tilt: bool = False, name: str = "CTChest4"):
    """The volume as a node of ``slicer.mrmlScene``, on its own grid or tilted (:func:`oblique`)."""
    import slicer

    matrix = volume.geometry.ijk_to_ras()
    return slicer.util.addVolumeFromArray(
        volume.to_original(volume.array), oblique(matrix) if tilt else matrix, name=name
    )


def ijk_to_ras(node) -> np.ndarray:
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def column(table_node, name: str) -> list:
    array = table_node.GetTable().GetColumnByName(name)
    assert array is not None, f"column {name!r} missing"
    return [array.GetValue(row) for row in range(array.GetNumberOfTuples())]


def node_named(scene, name: str, class_name: str):
    found = [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]
    found = [n for n in found if n.GetName() == name and n.GetClassName() == class_name]
    assert len(found) == 1, f"expected one {class_name} named {name!r}, found {len(found)}"
    return found[0]


def reload(mrml: Path):
    """A scene file read into a new scene, as Slicer opens it."""
    import slicer

    scene = slicer.vtkMRMLScene()
    scene.SetURL(str(mrml))
    assert scene.Import() == 1, f"{mrml} did not reload"
    return scene


# --- processes and anatomy -----------------------------------------------------------------------


def live_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies (an orphan's zombie waits for init, not for us)."""
    members = []
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_path.read_text()
        except OSError:
            continue
        state, _ppid, group = stat[stat.rfind(")") + 2:].split()[:3]
        if int(group) == pgid and state not in ("Z", "X"):
            members.append(int(stat_path.parent.name))
    return members


# A tiny study grid for dataset tests (index, splits, patients).
GEOMETRY = Geometry(size=(40, 40, 10), spacing=(1.0, 1.0, 2.5), origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def write_study(path: Path, seed: int = 0) -> Path:
    """A tiny int16 CT-like volume; the seed changes its content (and usually its compressed size)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 400, size=(10, 40, 40)).astype(np.int16)
    return write_volume(array, GEOMETRY, path)


def make_mosmed(root: Path, counts: dict[str, int], studies_folder: bool = True) -> Path:
    """A MosMed-style dataset with ``counts[class]`` studies named study_NNNN per class."""
    class_root = root / "studies" if studies_folder else root
    number = 0
    for label, count in counts.items():
        for _ in range(count):
            number += 1
            write_study(class_root / label / f"study_{number:04d}.nii.gz", seed=number)
    return root
