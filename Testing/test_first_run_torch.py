"""First run without PyTorch: what the modules say, ask and install, and what their self-tests do.

PyTorchUtils (the PyTorch extension) and the application's cursor and dialog exist only inside Slicer:
they are stand-ins here, recording what the module asks of them. The module files are loaded as in
test_extension_layout.py (conftest's ``slicer_stubbed``, ``load_module``) on slicer-core's real MRML.

The self-tests are also run in a child process where ``import torch`` fails, as on Slicer's build
machines: :func:`blocked_self_tests_skip_without_torch` is collected only there (by its own prefix).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import types
import unittest
from typing import ClassVar

import pytest

pytest.importorskip("slicer")

from helpers import MODULES, ROOT, load_module
from TwoFiveCNNLib.app import module_settings
from TwoFiveCNNLib.app.module_settings import (
    TORCH_INSTALL_NOTICE,
    TORCH_MINIMUM_VERSION,
    TORCH_SKIP_MESSAGE,
    TORCH_VERSION_REQUIREMENT,
)

INSIDE_CHILD = "TWOFIVECNN_TORCH_BLOCKED"


# --- the floor -----------------------------------------------------------------------------------


def test_torch_floor_is_the_first_release_built_for_numpy_2():
    assert TORCH_MINIMUM_VERSION == (2, 3)
    assert TORCH_VERSION_REQUIREMENT == ">=2.3"
    assert TORCH_VERSION_REQUIREMENT in TORCH_INSTALL_NOTICE


@pytest.mark.parametrize("module", MODULES)
def test_module_files_take_the_floor_from_module_settings(module):
    """Named once: a module file that sets its own floor, or writes a version, would drift from it."""
    path = ROOT / module / f"{module}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assigned = {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    assert not {name for name in assigned if name.startswith("TORCH_")}
    requirements = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                    and isinstance(node.value, str) and re.fullmatch(r"\s*[<>=!~]=?\s*\d+(\.\d+)*\s*", node.value)]
    assert requirements == [], f"{module}.py writes a version requirement of its own"


def test_package_requirement_admits_the_torch_the_modules_install():
    """Whatever torch the modules install in Slicer also satisfies the package's own requirement, so
    the library never runs on a torch its package metadata refuses."""
    floors = re.findall(r'^\s*"torch\s*>=\s*(\d+)\.(\d+)[^"]*",', (ROOT / "pyproject.toml").read_text(encoding="utf-8"),
                        flags=re.MULTILINE)
    assert len(floors) == 1, "pyproject.toml: one torch>=X.Y dependency"
    assert tuple(map(int, floors[0])) == TORCH_MINIMUM_VERSION, "one torch floor: the modules' and the package's"


# --- checkTorch: say, ask without the wait cursor, install, check --------------------------------


class _App:
    """The application's override-cursor stack and testing flag, as a button under
    ``tryWithErrorDisplay(..., waitCursor=True)`` leaves them."""

    def __init__(self, temporaryPath: str, testing: bool = False) -> None:
        self.temporaryPath = temporaryPath
        self.testing = testing
        self.cursors = ["WaitCursor"]

    def testingEnabled(self) -> bool:
        return self.testing

    def overrideCursor(self):
        return types.SimpleNamespace(shape=lambda: self.cursors[-1]) if self.cursors else None

    def restoreOverrideCursor(self) -> None:
        self.cursors.pop()

    def setOverrideCursor(self, shape) -> None:
        self.cursors.append(shape)


class _PyTorchUtils:
    """PyTorchUtils without torch: records every install request, returns ``installs`` torch."""

    calls: ClassVar[list[dict]] = []
    installs = None

    def torchInstalled(self) -> bool:
        return False

    def installTorch(self, **kwargs):
        type(self).calls.append(kwargs)
        return type(self).installs


@pytest.fixture
def first_run(request, monkeypatch, tmp_path):
    """No torch yet, a user at the panel (not testing), a question answered ``answer[0]``."""
    slicer = request.getfixturevalue("slicer_stubbed")
    app = _App(str(tmp_path))
    monkeypatch.setattr(slicer, "app", app)
    monkeypatch.setattr(_PyTorchUtils, "calls", [])
    monkeypatch.setattr(_PyTorchUtils, "installs", None)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=_PyTorchUtils))
    run = types.SimpleNamespace(slicer=slicer, app=app, answer=[True], questions=[], log=[])

    def confirm(text, **kwargs):
        run.questions.append({"text": text, "cursors": list(app.cursors), "logged": list(run.log)})
        return run.answer[0]

    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", confirm)
    run.module = load_module("TwoFiveCNN")
    run.logic = run.module.TwoFiveCNNLogic()
    run.logic.logCallback = run.log.append
    return run


def test_declined_install_says_first_asks_without_wait_cursor_and_installs_nothing(first_run):
    first_run.answer[0] = False
    with pytest.raises(RuntimeError, match="not installed"):
        first_run.logic.checkTorch()
    [question] = first_run.questions
    assert question["logged"] == [TORCH_INSTALL_NOTICE]  # the log said it before the dialog appeared
    assert "200 MB" in question["text"] and "2 GB" in question["text"] and "minutes" in question["text"]
    assert question["cursors"] == []  # no busy cursor over the question
    assert first_run.app.cursors == ["WaitCursor"]  # the button's cursor is back
    assert _PyTorchUtils.calls == []


def test_accepted_install_asks_for_the_floor_and_checks_what_came(first_run):
    _PyTorchUtils.installs = types.SimpleNamespace(__version__="2.2.2")  # a wheel built for NumPy 1
    with pytest.raises(RuntimeError, match="needs PyTorch >=2.3"):
        first_run.logic.checkTorch()
    # Asked once, by us: PyTorchUtils' own question (without the sizes) would repeat it.
    assert _PyTorchUtils.calls == [{"askConfirmation": False, "torchVersionRequirement": ">=2.3"}]
    assert len(first_run.questions) == 1

    _PyTorchUtils.installs = torch = types.SimpleNamespace(__version__="2.3.0+cpu")
    assert first_run.logic.checkTorch() is torch
    assert first_run.app.cursors == ["WaitCursor"]  # the install itself runs under the wait cursor


def test_console_install_without_question_still_says_what_happens(first_run):
    _PyTorchUtils.installs = torch = types.SimpleNamespace(__version__="2.5.1")
    assert first_run.logic.checkTorch(askConfirmation=False) is torch
    assert first_run.questions == []
    assert first_run.log == [TORCH_INSTALL_NOTICE]


def test_testing_mode_never_installs(first_run):
    first_run.app.testing = True
    with pytest.raises(RuntimeError, match="while Slicer runs its tests"):
        first_run.logic.checkTorch()
    assert _PyTorchUtils.calls == [] and first_run.questions == [] and first_run.log == []


def test_missing_pytorch_extension_is_named(first_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(RuntimeError, match='"PyTorch" extension.*Extensions Manager'):
        first_run.logic.checkTorch()


def test_training_checks_torch_through_the_same_path_and_logs_in_its_panel(first_run, monkeypatch):
    asked = []

    def module_logic(name):
        asked.append(name)
        return first_run.logic

    monkeypatch.setattr(first_run.slicer.util, "getModuleLogic", module_logic)
    training = load_module("TwoFiveCNNTraining").TwoFiveCNNTrainingLogic()
    panel = []
    training.logCallback = panel.append
    _PyTorchUtils.installs = torch = types.SimpleNamespace(__version__="2.3.1")
    assert training.checkTorch() is torch
    assert asked == ["TwoFiveCNN"]
    assert panel == [TORCH_INSTALL_NOTICE] and first_run.log == []
    assert _PyTorchUtils.calls == [{"askConfirmation": False, "torchVersionRequirement": ">=2.3"}]


# --- the self-tests where torch cannot be imported -----------------------------------------------


def test_self_tests_skip_without_torch():
    """Both modules' self-tests, run as Slicer's build machines run them (``--testing``, no torch):
    the tests that need torch say why they skip, the others pass, and nothing is installed."""
    code = ("import sys\n"
            "sys.modules['torch'] = None  # every 'import torch' fails, as where it is not installed\n"
            "import pytest\n"
            f"sys.exit(pytest.main([{__file__!r}, '-q', '-p', 'no:cacheprovider', '-o', 'addopts=',\n"
            "                      '-o', 'python_functions=blocked_*']))\n")
    env = {**os.environ, INSIDE_CHILD: "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "Testing",
                            env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert re.search(r"\b1 passed\b", result.stdout), result.stdout[-2000:]


class _PyTorchUtilsAsShipped:
    """PyTorchUtils' answers where torch is absent (it tries the import); installing is recorded, and
    fails the test."""

    installs: ClassVar[list[dict]] = []

    @staticmethod
    def torchInstalled() -> bool:
        try:
            import torch  # noqa: F401
        except ModuleNotFoundError:
            return False
        return True

    def installTorch(self, *args, **kwargs):
        type(self).installs.append(kwargs)
        raise AssertionError("a self-test tried to install PyTorch")


def blocked_self_tests_skip_without_torch(request, monkeypatch):
    """Runs only in :func:`test_self_tests_skip_without_torch`'s child process."""
    slicer = request.getfixturevalue("slicer_stubbed")
    assert os.environ.get(INSIDE_CHILD) == "1" and sys.modules.get("torch", 0) is None
    assert not module_settings.torch_importable()
    monkeypatch.setitem(sys.modules, "PyTorchUtils",
                        types.SimpleNamespace(PyTorchUtilsLogic=_PyTorchUtilsAsShipped))
    pip = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a, **k: pip.append(a), raising=False)

    # Tests needing torch: TwoFiveCNN's two preprocessing, two grading and the failure test; the
    # training run of TwoFiveCNNTraining.
    for module, skips in (("TwoFiveCNN", 5), ("TwoFiveCNNTraining", 1)):
        loaded = load_module(module)
        test_class = getattr(loaded, f"{module}Test")
        test_class.messages = []
        result = unittest.TextTestRunner(stream=sys.stderr, verbosity=0).run(test_class("runTest"))
        assert result.wasSuccessful(), result.failures + result.errors
        assert test_class.messages.count(TORCH_SKIP_MESSAGE) == skips, test_class.messages
        assert "Test passed" in test_class.messages  # the torch-free tests did run

        logic = getattr(loaded, f"{module}Logic")()
        if module == "TwoFiveCNNTraining":
            monkeypatch.setattr(slicer.util, "getModuleLogic",
                                lambda name: load_module(name).TwoFiveCNNLogic(), raising=False)
        with pytest.raises(RuntimeError, match="while Slicer runs its tests"):
            logic.checkTorch()

    assert _PyTorchUtilsAsShipped.installs == [] and pip == []
    assert sys.modules["torch"] is None  # nothing got past the block
