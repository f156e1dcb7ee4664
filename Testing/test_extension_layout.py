"""The Slicer extension skeleton stays consistent: CMake lists, module code, .ui files, icons (the
Extensions Index entry and what its checker wants: test_extension_index.py).

Slicer's Qt layer (qt, ctk, ScriptedLoadableModule) exists only inside the application, so module
files are parsed with ``ast`` rather than imported, except in the last section, which runs the
modules' own self-tests on real MRML nodes (slicer-core) with the Qt-only parts stubbed out.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import (
    MODULES,
    ROOT,
    cmake_commands,
    cmake_variables,
    find_class,
    load_module,
    module_tree,
    parent_assignments,
)

LIB = ROOT / "TwoFiveCNN" / "TwoFiveCNNLib"

# Top-level imports a module file may make: what Slicer's own Python provides, nothing heavy...
ALLOWED_TOP_LEVEL_IMPORTS = {"logging", "os", "re", "json", "pathlib", "typing", "unittest", "numpy", "vtk",
                             "qt", "ctk", "slicer"}
# ...and, of TwoFiveCNNLib, only what both modules share: standard library only (checked below).
LIGHT_LIBRARY_MODULES = {"TwoFiveCNNLib.app.module_settings"}


# --- helpers -------------------------------------------------------------------------------------


def base_names(cls: ast.ClassDef) -> set[str]:
    return {b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in cls.bases}


def string_literals(node: ast.AST) -> str:
    """All string constants inside an expression, joined (sees through ``_("...")`` and ``.format``)."""
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def parameter_fields(module: str) -> dict[str, str]:
    """Fields (name -> annotation source) of the class decorated with ``@parameterNodeWrapper``."""
    for node in module_tree(module).body:
        if isinstance(node, ast.ClassDef) and any(
            (d.id if isinstance(d, ast.Name) else ast.unparse(d)) == "parameterNodeWrapper"
            for d in node.decorator_list
        ):
            return {n.target.id: ast.unparse(n.annotation) for n in node.body
                    if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    raise AssertionError(f"{module}.py has no @parameterNodeWrapper class")


def ui_root(module: str) -> ET.Element:
    return ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui").getroot()


def lib_files() -> list[Path]:
    """Every file of the library, in every subpackage (caches excluded)."""
    return sorted(p for p in LIB.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def lib_python_files() -> list[Path]:
    return [p for p in lib_files() if p.suffix == ".py"]


# --- CMake lists ---------------------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_every_python_file_is_listed(module):
    """Slicer installs only listed scripts: a file missing from the list works here and breaks in Slicer."""
    listed = set(cmake_variables(ROOT / module / "CMakeLists.txt")["MODULE_PYTHON_SCRIPTS"])
    present = {p.name for p in (ROOT / module).glob("*.py")}
    if module == "TwoFiveCNN":
        present |= {f"TwoFiveCNNLib/{p.relative_to(LIB).as_posix()}" for p in lib_python_files()}
    assert present - listed == set(), f"{module}/CMakeLists.txt: add to MODULE_PYTHON_SCRIPTS"


@pytest.mark.parametrize("module", MODULES)
def test_every_listed_script_exists(module):
    listed = cmake_variables(ROOT / module / "CMakeLists.txt")["MODULE_PYTHON_SCRIPTS"]
    assert f"{module}.py" in listed
    missing = [name for name in listed if not (ROOT / module / name).is_file()]
    assert missing == [], f"{module}/CMakeLists.txt lists files that do not exist"


@pytest.mark.parametrize("module", MODULES)
def test_every_listed_resource_exists(module):
    resources = cmake_variables(ROOT / module / "CMakeLists.txt")["MODULE_PYTHON_RESOURCES"]
    assert f"Resources/Icons/{module}.png" in resources
    assert f"Resources/UI/{module}.ui" in resources
    missing = [name for name in resources if not (ROOT / module / name).is_file()]
    assert missing == [], f"{module}/CMakeLists.txt lists resources that do not exist"


def test_lib_data_files_are_listed_as_resources():
    """Non-Python files the library ships (JSON, model weights) must be installed as resources."""
    resources = set(cmake_variables(ROOT / "TwoFiveCNN" / "CMakeLists.txt")["MODULE_PYTHON_RESOURCES"])
    data = {f"TwoFiveCNNLib/{p.relative_to(LIB).as_posix()}" for p in lib_files() if p.suffix not in (".py", ".pyc")}
    assert data - resources == set()


@pytest.mark.parametrize("module", MODULES)
def test_module_cmake_builds_and_tests_the_module(module):
    commands = cmake_commands(ROOT / module / "CMakeLists.txt")
    build = [args for name, args in commands if name == "slicerMacroBuildScriptedModule"]
    assert len(build) == 1
    for keyword in ("NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS"):
        assert keyword in build[0]
    assert ("slicer_add_python_unittest", ["SCRIPT", "${MODULE_NAME}.py"]) in commands
    assert ("add_subdirectory", ["Testing"]) in commands
    assert (ROOT / module / "Testing" / "CMakeLists.txt").is_file()
    assert (ROOT / module / "Testing" / "Python" / "CMakeLists.txt").is_file()


def test_top_level_cmake_describes_the_extension():
    commands = cmake_commands(ROOT / "CMakeLists.txt")
    names = [name for name, _ in commands]
    variables = cmake_variables(ROOT / "CMakeLists.txt")
    assert ("project", ["TwoFiveCNN"]) in commands
    assert names.index("find_package") < names.index("add_subdirectory")
    for module in MODULES:
        assert ("add_subdirectory", [module]) in commands
    for include in ("${Slicer_USE_FILE}", "${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"):
        assert ("include", [include]) in commands
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                 "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS", "EXTENSION_CATEGORY"):
        assert variables.get(name) and all(v.strip() for v in variables[name]), f"{name} is empty"


def test_license_is_apache_2():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


# --- module code ---------------------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_module_classes_follow_the_template(module):
    tree = module_tree(module)
    assert "ScriptedLoadableModule" in base_names(find_class(tree, module))
    assert "ScriptedLoadableModuleWidget" in base_names(find_class(tree, f"{module}Widget"))
    assert "ScriptedLoadableModuleLogic" in base_names(find_class(tree, f"{module}Logic"))
    assert "ScriptedLoadableModuleTest" in base_names(find_class(tree, f"{module}Test"))
    test_methods = [n.name for n in find_class(tree, f"{module}Test").body
                    if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert test_methods, f"{module}Test has no test_ methods"


@pytest.mark.parametrize("module", MODULES)
def test_module_metadata_is_filled_in(module):
    """Slicer's generic module test fails when any of these is empty."""
    assigned = parent_assignments(module)
    for attribute in ("title", "categories", "contributors", "helpText", "acknowledgementText"):
        assert attribute in assigned, f"{module}: self.parent.{attribute} is not set"
        assert string_literals(assigned[attribute]).strip(), f"{module}: self.parent.{attribute} is empty"
    for attribute in ("categories", "contributors"):
        assert isinstance(assigned[attribute], ast.List) and assigned[attribute].elts
    help_text = string_literals(assigned["helpText"])
    assert "synthetic" in help_text and "clinical" in help_text
    acknowledgement = string_literals(assigned["acknowledgementText"])
    assert "10.3390/electronics14132571" in acknowledgement and "MosMed" in acknowledgement


def test_modules_sit_in_the_extension_category():
    """Both modules appear together in Slicer's module list, under the category the Extensions Index
    lists the extension in (which test_extension_index.py checks against the accepted list)."""
    categories = {string_literals(parent_assignments(module)["categories"]) for module in MODULES}
    assert categories == {cmake_variables(ROOT / "CMakeLists.txt")["EXTENSION_CATEGORY"][0]}, categories


def test_module_titles():
    assert string_literals(parent_assignments("TwoFiveCNN")["title"]) == "TwoFiveCNN"
    assert string_literals(parent_assignments("TwoFiveCNNTraining")["title"]) == "TwoFiveCNN Training"


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_nothing_heavy_at_load_time(module):
    """Slicer imports every module at startup: torch and most of TwoFiveCNNLib must wait until needed."""
    for node in module_tree(module).body:
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.module in LIGHT_LIBRARY_MODULES:
                continue
            roots = {(node.module or "").split(".")[0]}
        else:
            continue
        assert roots <= ALLOWED_TOP_LEVEL_IMPORTS, f"{module}.py line {node.lineno} imports {roots}"


def test_library_modules_imported_at_load_time_are_light():
    """What the module files import at startup from TwoFiveCNNLib brings in neither torch nor numpy."""
    code = ("import importlib, sys\n"
            f"for name in {sorted(LIGHT_LIBRARY_MODULES)!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'SimpleITK', 'vtk'}))")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"heavy modules imported: {result.stdout}"


@pytest.mark.parametrize("module", MODULES)
def test_widget_setup_stays_silent(module):
    """The generic tests instantiate the widget: setup() must not import torch or open dialogs."""
    setup = next(n for n in find_class(module_tree(module), f"{module}Widget").body
                 if isinstance(n, ast.FunctionDef) and n.name == "setup")
    for node in ast.walk(setup):
        assert not isinstance(node, (ast.Import, ast.ImportFrom)), f"setup() imports at line {node.lineno}"
        if isinstance(node, ast.Call):
            called = ast.unparse(node.func)
            assert not re.search(r"checkTorch|installTorch|pip_install|Display|messageBox|QMessageBox", called), \
                f"setup() calls {called}"


@pytest.mark.parametrize("module", MODULES)
def test_ui_names_used_in_code_exist(module):
    used = {node.attr for node in ast.walk(module_tree(module))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    declared = {w.get("name") for w in ui_root(module).iter("widget")}
    assert used, f"{module}.py uses no self.ui widgets"
    assert used - declared == set(), f"{module}.py uses widgets missing from {module}.ui"


@pytest.mark.parametrize("module", MODULES)
def test_ui_parameter_names_match_parameter_node(module):
    fields = parameter_fields(module)
    bound = {}
    for widget in ui_root(module).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = widget.get("class")
    assert bound, f"{module}.ui binds no widget to the parameter node"
    assert set(bound) <= set(fields), f"{module}.ui binds unknown parameters"
    assert set(fields) <= set(bound), f"{module}: parameter(s) without a widget"


@pytest.mark.parametrize("module", MODULES)
def test_loaded_ui_file_exists(module):
    calls = [node for node in ast.walk(module_tree(module))
             if isinstance(node, ast.Call) and ast.unparse(node.func) == "self.resourcePath"]
    assert calls
    for call in calls:
        assert (ROOT / module / "Resources" / call.args[0].value).is_file()


def test_module_files_pass_pyflakes_rules():
    ruff = ROOT / ".venv" / "bin" / "ruff"
    if not ruff.is_file():
        ruff = Path(sys.executable).parent / "ruff"
    files = [str(ROOT / module / f"{module}.py") for module in MODULES]
    result = subprocess.run([str(ruff), "check", "--select", "F", "--no-cache", *files],
                            check=False, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


# --- .ui files and icons -------------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_ui_file_is_a_qmrmlwidget_with_declared_custom_widgets(module):
    root = ui_root(module)
    assert root.tag == "ui" and root.findtext("class") == module
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == module
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared
    assert "ctkCollapsibleButton" in used
    buttons = {w.get("name"): w for w in root.iter("widget") if w.get("class") == "QPushButton"}
    assert buttons, f"{module}.ui has no buttons"


def test_main_ui_has_input_selector_apply_and_result():
    root = ui_root("TwoFiveCNN")
    widgets = {w.get("name"): w for w in root.iter("widget")}
    selector = widgets["inputSelector"]
    assert selector.get("class") == "qMRMLNodeComboBox"
    node_types = [s.text for p in selector.findall("property") if p.get("name") == "nodeTypes"
                  for s in p.iter("string")]
    assert node_types == ["vtkMRMLScalarVolumeNode"]
    assert widgets["applyButton"].get("class") == "QPushButton"
    assert widgets["resultLabel"].get("class") == "QLabel"
    connections = {(c.findtext("receiver"), c.findtext("slot")) for c in root.iter("connection")}
    assert ("inputSelector", "setMRMLScene(vtkMRMLScene*)") in connections


def test_training_panel_has_dataset_training_and_result_widgets():
    """Train starts a run; Cancel and Resume stay disabled until a run exists, and say so."""
    widgets = {w.get("name"): w for w in ui_root("TwoFiveCNNTraining").iter("widget")}
    for name in ("trainButton", "cancelButton", "resumeButton", "summarizeButton", "addVolumesButton",
                 "useInTwoFiveCNNButton"):
        assert widgets[name].get("class") == "QPushButton"
        properties = {p.get("name"): p for p in widgets[name].findall("property")}
        assert properties["toolTip"].findtext("string").strip(), f"{name} has no tooltip"
    for name in ("cancelButton", "resumeButton", "useInTwoFiveCNNButton"):
        properties = {p.get("name"): p for p in widgets[name].findall("property")}
        assert properties["enabled"].findtext("bool") == "false"
        assert "only" in properties["toolTip"].findtext("string").lower() or name == "useInTwoFiveCNNButton"
    assert widgets["datasetPathLineEdit"].get("class") == "ctkPathLineEdit"
    assert widgets["modelPathLineEdit"].get("class") == "ctkPathLineEdit"
    assert widgets["labelTableSelector"].get("class") == "qMRMLNodeComboBox"
    for name in ("labelTableView", "metricsTableView", "confusionTableView"):
        assert widgets[name].get("class") == "qMRMLTableView"
    assert widgets["curvesPlotWidget"].get("class") == "qMRMLPlotWidget"
    assert widgets["progressBar"].get("class") == "QProgressBar"
    assert widgets["logTextEdit"].get("class") == "QPlainTextEdit"
    assert widgets["summaryTextEdit"].get("class") == "QPlainTextEdit"
    connections = {(c.findtext("receiver"), c.findtext("slot")) for c in ui_root("TwoFiveCNNTraining").iter("connection")}
    for name in ("labelTableSelector", "labelTableView", "curvesPlotWidget", "metricsTableView", "confusionTableView"):
        assert (name, "setMRMLScene(vtkMRMLScene*)") in connections


def test_training_widget_polls_and_never_waits():
    """The GUI reads the training process from a QTimer; a blocking wait in the widget would freeze Slicer."""
    widget = find_class(module_tree("TwoFiveCNNTraining"), "TwoFiveCNNTrainingWidget")
    calls = {ast.unparse(n.func) for n in ast.walk(widget) if isinstance(n, ast.Call)}
    assert "qt.QTimer" in calls and "self.timer.start" in calls
    assert not {c for c in calls if re.search(r"\.wait$|time\.sleep|communicate|subprocess", c)}


@pytest.mark.parametrize("icon", ["Resources/Icons/TwoFiveCNN.png", "TwoFiveCNN/Resources/Icons/TwoFiveCNN.png",
                                  "TwoFiveCNNTraining/Resources/Icons/TwoFiveCNNTraining.png"])
def test_icons_are_128_pixel_pngs(icon):
    from PIL import Image

    with Image.open(ROOT / icon) as image:
        assert image.format == "PNG"
        assert image.size == (128, 128)
        image.verify()


# --- the modules' own self-tests, on real MRML nodes ---------------------------------------------


def run_self_tests(test_class) -> list[str]:
    """Run a ``<Module>Test`` class's test_ methods; returns what they displayed."""
    test_class.messages = []
    suite = unittest.TestLoader().loadTestsFromTestCase(test_class)
    assert suite.countTestCases() > 0
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=0).run(suite)
    problems = [f"{test}: {trace}" for test, trace in result.failures + result.errors]
    assert result.wasSuccessful(), "\n".join(problems)
    return test_class.messages


@pytest.mark.parametrize("module", MODULES)
def test_module_self_tests_pass_on_mrml(slicer_stubbed, module, request):
    """Runs ``<Module>Test``'s test_ methods with the real logic, TwoFiveCNNLib and MRML volume nodes.

    The grading self-tests use the bundled demo model in Slicer; here they get a really trained
    small model instead, so none of them is skipped.
    """
    loaded = load_module(module)
    test_class = getattr(loaded, f"{module}Test")
    if module == "TwoFiveCNN":
        test_class.modelPath = str(request.getfixturevalue("tiny_model"))
    messages = run_self_tests(test_class)
    assert not [m for m in messages if m.startswith("Skipped")], messages


def test_grading_self_tests_skip_without_a_model(slicer_stubbed, tmp_path):
    """In a Slicer build without the demo model, the grading self-tests say they skip and pass."""
    loaded = load_module("TwoFiveCNN")
    loaded.BUNDLED_MODEL_PATH = tmp_path / "no_demo_model.pt"
    messages = run_self_tests(loaded.TwoFiveCNNTest)
    skipped = [m for m in messages if m.startswith("Skipped: no model at")]
    assert len(skipped) == 2, messages


def test_logic_matches_reading_the_same_volume_from_file(slicer_stubbed, tmp_path):
    """A node's voxels + IJK-to-RAS give the same model grid as the file TwoFiveCNNLib reads itself."""
    import numpy as np
    from TwoFiveCNNLib.io.volume import Geometry, read_volume, write_volume
    from TwoFiveCNNLib.transforms.preprocess import PreprocessConfig, to_model_grid

    loaded = load_module("TwoFiveCNN")
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 400, size=(10, 30, 26)).astype(np.int16)
    # Stored like many DICOM series: i to patient Left, j to Posterior, slices running head to feet.
    geometry = Geometry(size=array.shape[::-1], spacing=(0.7, 0.8, 2.5), origin=(-10.0, 20.0, 30.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    path = write_volume(array, geometry, tmp_path / "study.nrrd")
    node = slicer_stubbed.util.addVolumeFromArray(array, geometry.ijk_to_ras(), name="study")

    config = PreprocessConfig(in_plane=16, n_slices=8)
    from_node = loaded.TwoFiveCNNLogic().preprocessVolumeNode(node, config)
    from_file, _ = to_model_grid(read_volume(path), config)
    np.testing.assert_allclose(from_node, from_file, atol=1e-6)
