"""TwoFiveCNN: COVID-19 pneumonia severity (MosMed CT-0..CT-4) on chest CT, and where the evidence is.

A thin Slicer front end. The widget only wires the GUI to the logic; the logic only converts
between MRML nodes and TwoFiveCNNLib, where all real work lives. TwoFiveCNNLib needs PyTorch,
so the parts of it that import torch are imported inside the logic methods that need them,
after :meth:`TwoFiveCNNLogic.checkTorch`, never when Slicer loads this module.
"""

import logging
import re

import numpy as np
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Installed through the PyTorch extension's PyTorchUtils when missing (the user is asked first).
TORCH_VERSION_REQUIREMENT = ">=2.1"
TORCH_MINIMUM_VERSION = (2, 1)

HOMEPAGE = "https://github.com/twofivecnn/SlicerTwoFiveCNN"

logger = logging.getLogger(__name__)


#
# TwoFiveCNN
#


class TwoFiveCNN(ScriptedLoadableModule):
    """Module metadata, shown in Slicer's module panel and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TwoFiveCNN")
        self.parent.categories = [_("Chest Imaging")]
        self.parent.dependencies = []  # PyTorchUtils is checked when needed, with a message if missing
        self.parent.contributors = ["TwoFiveCNN developers"]
        self.parent.helpText = _("""
Grades COVID-19 pneumonia severity on a chest CT volume with the MosMed scale (CT-0: no findings,
CT-1: under 25% of the lungs involved, CT-2: 25-50%, CT-3: 50-75%, CT-4: over 75%) using a two-stage
2.5D convolutional network: a 2D network embeds every axial slice, and a light volumetric head combines
the slice embeddings into class probabilities. It also shows where the evidence lies: per-slice attention
and in-plane activation are combined into a 3D evidence map on the input's own voxel grid.
<p>Select a chest CT volume in Hounsfield units (any orientation) and press Apply. The volume is
reoriented, windowed, cropped to the body and resampled to the model grid. At this stage of development
Apply runs the preprocessing only and reports the model grid size.</p>
<p>PyTorch is needed: install the "PyTorch" extension from the Extensions Manager; PyTorch itself is
then installed on first use, after asking you.</p>
<p><b>The bundled demo model was trained on synthetic phantoms only. It is not a medical device and
must not be used for clinical decisions.</b> Train your own model with the TwoFiveCNN Training module.</p>
<p>See the <a href="{homepage}">project page</a> for documentation.</p>
""").format(homepage=HOMEPAGE)
        self.parent.acknowledgementText = _("""
The method follows A. Garg, A. Garg and D. Duncan, "2.5 CNN: Leveraging 2D CNNs to Pretrain 3D Models
in Low-Data Regimes for COVID-19 Diagnosis", Electronics 2025, 14(13), 2571,
<a href="https://doi.org/10.3390/electronics14132571">doi:10.3390/electronics14132571</a>.
The severity classes are those of MosMedData (S.P. Morozov et al., "MosMedData: Chest CT Scans with
COVID-19 Related Findings Dataset", medRxiv 2020,
<a href="https://doi.org/10.1101/2020.05.20.20100362">doi:10.1101/2020.05.20.20100362</a>;
licensed CC BY-NC-ND 3.0). The module layout follows the 3D Slicer scripted module template.
""")


#
# TwoFiveCNNParameterNode
#


@parameterNodeWrapper
class TwoFiveCNNParameterNode:
    """What the user chose, saved with the scene.

    inputVolume: the chest CT (HU) to grade.
    """

    inputVolume: vtkMRMLScalarVolumeNode


#
# TwoFiveCNNWidget
#


class TwoFiveCNNWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI only: binds the .ui to the parameter node and hands the work to TwoFiveCNNLogic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        # Must stay cheap and silent: the generic tests instantiate the widget. No torch, no dialogs.
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TwoFiveCNN.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = TwoFiveCNNLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Binds every widget with a SlicerParameterName property in the .ui to its parameter.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._parameterNode and self._parameterNode.inputVolume:
            self.ui.applyButton.toolTip = _("Prepare the selected volume for the model.")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select a chest CT volume first.")
            self.ui.applyButton.enabled = False

    def onApplyButton(self) -> None:
        volumeNode = self._parameterNode.inputVolume
        self.ui.resultLabel.text = ""
        with slicer.util.tryWithErrorDisplay(_("Failed to prepare the volume."), waitCursor=True):
            self.logic.checkTorch()
            grid = self.logic.preprocessVolumeNode(volumeNode)
            slices, height, width = grid.shape
            self.ui.resultLabel.text = _(
                "{name}: model grid of {slices} slices of {height} x {width} pixels "
                "(intensities {low:.2f} to {high:.2f}). Severity grading arrives with the model."
            ).format(name=volumeNode.GetName(), slices=slices, height=height, width=width,
                     low=float(grid.min()), high=float(grid.max()))


#
# TwoFiveCNNLogic
#


class TwoFiveCNNLogic(ScriptedLoadableModuleLogic):
    """MRML <-> TwoFiveCNNLib. Usable from the Python console without the widget::

        logic = slicer.util.getModuleLogic("TwoFiveCNN")  # or TwoFiveCNNLogic()
        logic.checkTorch()
        grid = logic.preprocessVolumeNode(getNode("CTChest"))
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return TwoFiveCNNParameterNode(super().getParameterNode())

    def checkTorch(self, askConfirmation: bool = True):
        """Make sure a recent enough PyTorch is importable and return the ``torch`` module.

        Installs PyTorch through the PyTorch extension when it is missing, asking the user first
        (PyTorchUtils skips the question when Slicer runs its tests). Call it from an action the
        user started, never at import time.
        """
        try:
            import PyTorchUtils
        except ModuleNotFoundError as error:
            raise RuntimeError(
                'TwoFiveCNN needs the "PyTorch" extension. Install it from the Extensions Manager '
                '(search for "PyTorch"), restart Slicer and try again.'
            ) from error
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.torchInstalled():
            import torch
        else:
            torch = torchLogic.installTorch(askConfirmation=askConfirmation,
                                            torchVersionRequirement=TORCH_VERSION_REQUIREMENT)
            if torch is None:
                raise RuntimeError(
                    "PyTorch is required but was not installed. Press Apply again to install it, "
                    "or install it from the PyTorch Utils module."
                )
        if not _versionAtLeast(torch.__version__, TORCH_MINIMUM_VERSION):
            raise RuntimeError(
                f"PyTorch {torch.__version__} is installed, but TwoFiveCNN needs PyTorch {TORCH_VERSION_REQUIREMENT}. "
                "Uninstall it in the PyTorch Utils module, restart Slicer, and press Apply again to install a "
                "current version."
            )
        logger.info(f"TwoFiveCNN: using PyTorch {torch.__version__}")
        return torch

    def volumeFromNode(self, volumeNode):
        """The node's voxels and geometry as a TwoFiveCNNLib ``Volume`` (canonical orientation).

        The voxel array is a view into the node's image data: do not modify it. A parent transform
        is ignored, because results are mapped back onto this same voxel grid.
        """
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError(_("Select a volume that contains image data."))
        array = slicer.util.arrayFromVolume(volumeNode)  # numpy [k, j, i]
        if array.ndim != 3:
            raise ValueError(
                _("{name} has {components} components per voxel; a single-component CT volume in HU is needed.")
                .format(name=volumeNode.GetName(), components=array.shape[-1])
            )
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)

        from TwoFiveCNNLib.volume_io import Geometry, Volume

        geometry = Geometry.from_ijk_to_ras(slicer.util.arrayFromVTKMatrix(ijkToRas), array.shape[::-1])
        warnings = []
        if volumeNode.GetParentTransformNode() is not None:
            warnings.append(f"{volumeNode.GetName()}: its parent transform is ignored; results use its own voxel grid.")
        return Volume.from_original(array, geometry, source=volumeNode.GetName(), warnings=warnings)

    def preprocessVolumeNode(self, volumeNode, config=None) -> np.ndarray:
        """Window, crop and resample the node's voxels to the model grid.

        Returns a float32 array ``(slices, in_plane, in_plane)`` with values in 0..1. ``config`` is a
        ``TwoFiveCNNLib.preprocess.PreprocessConfig`` (default settings when None); once a model is
        loaded, pass the model's own config. Needs PyTorch (see :meth:`checkTorch`).
        """
        from TwoFiveCNNLib.preprocess import PreprocessConfig, to_model_grid

        volume = self.volumeFromNode(volumeNode)
        for warning in volume.warnings:
            logger.warning(warning)
        grid, _mapping = to_model_grid(volume, config if config is not None else PreprocessConfig())
        return grid


def _versionAtLeast(version: str, minimum: tuple) -> bool:
    """Whether a version string such as "2.3.1+cu121" is at least ``minimum`` (major, minor)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return bool(match) and (int(match.group(1)), int(match.group(2))) >= tuple(minimum)


#
# TwoFiveCNNTest
#


class TwoFiveCNNTest(ScriptedLoadableModuleTest):
    """Self-tests on synthetic volume nodes, run with "Reload and Test" or by CTest.

    They exercise the real logic and TwoFiveCNNLib (PyTorch is installed through the PyTorch
    extension if missing, without asking, as Slicer does when testing).
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_versionAtLeast, self.test_volumeFromNode_keeps_geometry,
                     self.test_preprocessVolumeNode_grid, self.test_preprocessVolumeNode_ignores_storage_order):
            self.setUp()
            test()

    @staticmethod
    def _syntheticChest(shape=(24, 72, 64)):
        """A crude chest in HU, numpy [k, j, i]: air, a soft-tissue ellipse, two lungs, one opacity."""
        k, j, i = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
        volume = np.full(shape, -1000, dtype=np.int16)
        volume[(i / 0.9) ** 2 + (j / 0.7) ** 2 < 1.0] = 40
        for centre in (-0.4, 0.4):
            volume[((i - centre) / 0.3) ** 2 + (j / 0.5) ** 2 + (k / 0.9) ** 2 < 1.0] = -850
        volume[((i - 0.4) / 0.1) ** 2 + (j / 0.1) ** 2 + ((k - 0.2) / 0.2) ** 2 < 1.0] = -300
        return volume

    def test_versionAtLeast(self):
        self.assertTrue(_versionAtLeast("2.1.0", (2, 1)))
        self.assertTrue(_versionAtLeast("2.10.0+cu121", (2, 1)))
        self.assertFalse(_versionAtLeast("1.13.1", (2, 1)))
        self.assertFalse(_versionAtLeast("unknown", (2, 1)))

    def test_volumeFromNode_keeps_geometry(self):
        self.delayDisplay("Volume node to TwoFiveCNNLib volume")
        ijkToRas = np.array([[-0.7, 0.0, 0.0, 120.0],
                             [0.0, -0.7, 0.0, 80.0],
                             [0.0, 0.0, 2.5, -300.0],
                             [0.0, 0.0, 0.0, 1.0]])
        array = self._syntheticChest()
        volumeNode = slicer.util.addVolumeFromArray(array, ijkToRas, name="SyntheticChest")
        volume = TwoFiveCNNLogic().volumeFromNode(volumeNode)
        np.testing.assert_allclose(volume.geometry.ijk_to_ras(), ijkToRas, atol=1e-9)
        self.assertEqual(tuple(volume.geometry.size), array.shape[::-1])
        np.testing.assert_array_equal(volume.to_original(volume.array), array)
        self.delayDisplay("Test passed")

    def test_preprocessVolumeNode_grid(self):
        self.delayDisplay("Preprocessing a synthetic chest to the model grid")
        logic = TwoFiveCNNLogic()
        logic.checkTorch(askConfirmation=False)
        from TwoFiveCNNLib.preprocess import PreprocessConfig

        volumeNode = slicer.util.addVolumeFromArray(self._syntheticChest(), np.diag([0.8, 0.8, 2.0, 1.0]))
        config = PreprocessConfig(in_plane=32, n_slices=16)
        grid = logic.preprocessVolumeNode(volumeNode, config)
        self.assertEqual(grid.shape, (16, 32, 32))
        self.assertEqual(grid.dtype, np.float32)
        self.assertGreaterEqual(float(grid.min()), 0.0)
        self.assertLessEqual(float(grid.max()), 1.0)
        self.assertGreater(float(grid.max()), float(grid.min()))
        self.delayDisplay("Test passed")

    def test_preprocessVolumeNode_ignores_storage_order(self):
        self.delayDisplay("The same anatomy stored left-to-right or right-to-left gives the same grid")
        logic = TwoFiveCNNLogic()
        logic.checkTorch(askConfirmation=False)
        from TwoFiveCNNLib.preprocess import PreprocessConfig

        array = self._syntheticChest()
        spacing = (0.8, 0.8, 2.0)
        ijkToRas = np.diag([*spacing, 1.0])
        # Reverse the i axis and point it the other way: the voxels sit at the same RAS positions.
        flippedToRas = ijkToRas.copy()
        flippedToRas[0, 0] = -spacing[0]
        flippedToRas[0, 3] = (array.shape[2] - 1) * spacing[0]
        nodeA = slicer.util.addVolumeFromArray(array, ijkToRas, name="StoredRightward")
        nodeB = slicer.util.addVolumeFromArray(np.ascontiguousarray(array[:, :, ::-1]), flippedToRas,
                                               name="StoredLeftward")
        config = PreprocessConfig(in_plane=32, n_slices=16)
        np.testing.assert_allclose(logic.preprocessVolumeNode(nodeA, config),
                                   logic.preprocessVolumeNode(nodeB, config), atol=1e-6)
        self.delayDisplay("Test passed")
