"""TwoFiveCNN: COVID-19 pneumonia severity (MosMed CT-0..CT-4) on chest CT, and where the evidence is.

A thin Slicer front end. The widget only wires the GUI to the logic; the logic only converts
between MRML nodes and TwoFiveCNNLib, where all real work lives. Its networks need PyTorch (reading a
volume and preparing it for the model grid do not: they are NumPy), so the parts of it that import
torch are imported inside the logic methods that need them, after :meth:`TwoFiveCNNLogic.checkTorch`,
never when Slicer loads this module.
"""

import logging
import os
import pathlib
import re
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Shared with the Training module; standard library only, so no torch at Slicer start-up.
from TwoFiveCNNLib.app.module_settings import (
    DEVICE_CHOICES,
    HOMEPAGE,
    LAST_MODEL_FILE_SETTING,
    OVERLAY_KINDS,
    POLL_INTERVAL_MS,
    TORCH_INSTALL_NOTICE,
    TORCH_MINIMUM_VERSION,
    TORCH_SKIP_MESSAGE,
    TORCH_VERSION_REQUIREMENT,
    device_option,
    path_is_set,
    python_executable,
    torch_importable,
)

# Where TwoFiveCNNLib.inference.predict.BUNDLED_MODEL lives, known without importing torch (the widget shows
# whether the demo model is there before anything heavy is loaded). A test keeps the two equal.
BUNDLED_MODEL_PATH = pathlib.Path(__file__).resolve().parent / "TwoFiveCNNLib" / "inference" / "demo_model.pt"

# Sample data: a synthetic phantom chest CT the module makes itself (TwoFiveCNNLib.data.phantoms).
SAMPLE_DATA_CATEGORY = "TwoFiveCNN"
SAMPLE_PHANTOM_NAME = "TwoFiveCNNPhantom"
SAMPLE_PHANTOM_LABEL, SAMPLE_PHANTOM_SEED = 2, 11  # MosMed CT-2: lesions to see, lungs left to see them in
# The Sample Data module wants a URI; this one is never fetched (its button calls the custom loader),
# and its unknown scheme fails at once, offline, should anything else try.
SAMPLE_PHANTOM_URI = "twofivecnn:phantom"

logger = logging.getLogger(__name__)


#
# TwoFiveCNN
#


class TwoFiveCNN(ScriptedLoadableModule):
    """Module metadata, shown in Slicer's module panel and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TwoFiveCNN")
        self.parent.categories = [_("Chest Imaging Platform")]
        self.parent.dependencies = []  # PyTorchUtils is checked when needed, with a message if missing
        self.parent.contributors = ["TwoFiveCNN developers"]
        self.parent.helpText = _("""
Grades COVID-19 pneumonia severity on a chest CT volume with the MosMed scale (CT-0: no findings,
CT-1: under 25% of the lungs involved, CT-2: 25-50%, CT-3: 50-75%, CT-4: over 75%) using a two-stage
2.5D convolutional network: a 2D network embeds every axial slice, and a light volumetric head combines
the slice embeddings into class probabilities, with an attention weight per slice (the slices the grade
rests on). Beside the grade it measures the lungs: their volume, the share of each HU band and the
involved share, and shows where the lesions are as a lesion map on the input's own voxel grid.
<p>Select a chest CT volume in Hounsfield units (any orientation), choose the model (the bundled demo
model or a model file trained with the TwoFiveCNN Training module or <code>twofivecnn train</code>) and
press Apply. The grade and the class probabilities appear in the panel and in a table node, the lesion
map (or the lung bands) is overlaid on the slice views, and "Jump to most-attended slice" shows the slice the model relied on
most. The lungs ("right lung", "left lung") and the HU bands are segmentations, and every result
sits in one folder "TwoFiveCNN: &lt;name&gt;" under the CT's study in the Data module (delete the
folder to remove the result). "Show results" switches to a layout with the involvement table and the
attention plot; "Show 3D" builds the segmentations' surfaces.
The Batch section grades every volume file of a folder and writes one JSON, lesion-map volume and
picture per study plus a summary.tsv, exactly like <code>twofivecnn predict</code>.</p>
<p>PyTorch is needed: install the "PyTorch" extension from the Extensions Manager; PyTorch itself is
then installed on first use, after asking you.</p>
<p><b>The bundled demo model was trained on synthetic data only (phantoms, and lesions inserted into variants of two real chest CTs). It is not a medical device and
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
        # The phantom joins the Sample Data module once every module is loaded (SampleData among them).
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#


def registerSampleData() -> None:
    """Offer a synthetic phantom chest CT in the Sample Data module: made here, nothing is downloaded.

    Does nothing where there is no Sample Data module (Python without the Slicer application, or an
    application built without it). Registering again (a module reload) replaces the entry.
    """
    try:
        import SampleData
    except ImportError:
        return
    sources = SampleData.SampleDataLogic.sampleDataSourcesByCategory(SAMPLE_DATA_CATEGORY)
    sources[:] = [source for source in sources if source.sampleName != SAMPLE_PHANTOM_NAME]
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_DATA_CATEGORY,
        sampleName=SAMPLE_PHANTOM_NAME,
        uris=SAMPLE_PHANTOM_URI,
        fileNames=SAMPLE_PHANTOM_NAME + ".nrrd",
        nodeNames=SAMPLE_PHANTOM_NAME,
        thumbnailFileName=str(pathlib.Path(__file__).resolve().parent / "Resources" / "Icons" / "TwoFiveCNN.png"),
        loadFileType="VolumeFile",
        customDownloader=_loadSamplePhantom,
    )


def _loadSamplePhantom(source):
    """The Sample Data button's action: make the phantom node (the source's URI is never fetched)."""
    return TwoFiveCNNLogic().loadSamplePhantom(name=source.nodeNames[0])


#
# TwoFiveCNNParameterNode
#


@parameterNodeWrapper
class TwoFiveCNNParameterNode:
    """What the user chose, saved with the scene.

    inputVolume: the chest CT (HU) to grade.
    useDemoModel: grade with the bundled synthetic-data demo model instead of ``modelPath``.
    modelPath: a model file written by TwoFiveCNN training.
    device: "auto" (GPU when available), "CPU" or "GPU".
    showOverlay, overlayOpacity: the chosen overlay as the slice views' foreground layer.
    overlayKind: which overlay: "lesion map" (the involved share of the lung around each voxel) or "lung bands"
      (the HU bands of the lungs).
    batchInputFolder, batchOutputFolder, batchWriteScenes: the Batch section.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    useDemoModel: bool = True
    modelPath: pathlib.Path
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    showOverlay: bool = True
    overlayKind: Annotated[str, Choice(list(OVERLAY_KINDS))] = "lesion map"
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.4
    batchInputFolder: pathlib.Path
    batchOutputFolder: pathlib.Path
    batchWriteScenes: bool = False


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
        self._shownVolume = None  # the input whose results the panel shows
        self._connectingGui = False  # binding writes the widgets: that must not touch the slice views
        self.batchTimer = None
        self.batchCancelButton = None

    def setup(self) -> None:
        # Must stay cheap and silent: the generic tests instantiate the widget. No torch, no dialogs.
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TwoFiveCNN.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = TwoFiveCNNLogic()
        self.logic.logCallback = self.log

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.overlayCheckBox.connect("toggled(bool)", self.onOverlayChanged)
        self.ui.overlayKindComboBox.connect("currentIndexChanged(int)", self.onOverlayChanged)
        self.ui.opacitySliderWidget.connect("valueChanged(double)", self.onOverlayChanged)
        self.ui.jumpButton.connect("clicked(bool)", self.onJumpButton)
        self.ui.showPlotButton.connect("clicked(bool)", self.onShowPlotButton)
        self.ui.showResultsButton.connect("clicked(bool)", self.onShowResultsButton)
        self.ui.show3DButton.connect("clicked(bool)", self.onShow3DButton)
        self.ui.runBatchButton.connect("clicked(bool)", self.onRunBatchButton)

        # The batch runs in a child process: a timer collects its progress, never waiting for it.
        self.batchCancelButton = qt.QPushButton(_("Cancel batch"))
        self.batchCancelButton.toolTip = _("Stop the batch; the studies graded so far keep their outputs.")
        self.batchCancelButton.enabled = False
        self.batchCancelButton.connect("clicked(bool)", self.onCancelBatchButton)
        self.ui.runBatchButton.parentWidget().layout().insertRow(4, self.batchCancelButton)
        self.batchTimer = qt.QTimer()
        self.batchTimer.setInterval(POLL_INTERVAL_MS)
        self.batchTimer.connect("timeout()", self.onBatchTimer)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.batchTimer is not None:
            self.batchTimer.stop()
        if self.logic is not None and self.logic.isBatchRunning():
            self.logic.cancelBatch(wait=True)  # no batch left running after the module is gone
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
        if not path_is_set(self._parameterNode.modelPath):
            lastModelFile = str(slicer.app.userSettings().value(LAST_MODEL_FILE_SETTING, "") or "")
            if lastModelFile and os.path.isfile(lastModelFile):
                self._parameterNode.modelPath = pathlib.Path(lastModelFile)
        if self._parameterNode.useDemoModel and not BUNDLED_MODEL_PATH.is_file():
            self._parameterNode.useDemoModel = False

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._shownVolume = None
        if self._parameterNode:
            # Binds every widget with a SlicerParameterName property in the .ui to its parameter.
            self._connectingGui = True
            try:
                self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            finally:
                self._connectingGui = False
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        if not self._parameterNode:
            return
        parameters = self._parameterNode
        demoAvailable = BUNDLED_MODEL_PATH.is_file()
        self.ui.useDemoModelCheckBox.enabled = demoAvailable or parameters.useDemoModel
        self.ui.useDemoModelCheckBox.toolTip = (
            _("Grade with the demo model bundled with the extension (trained on synthetic data only).")
            if demoAvailable else _("The demo model is not included in this build: choose a model file."))
        self.ui.modelPathLineEdit.enabled = not parameters.useDemoModel
        self.ui.demoModelWarningLabel.visible = parameters.useDemoModel

        applyProblem = self.logic.applyProblem(parameters)
        self.ui.applyButton.enabled = applyProblem is None
        self.ui.applyButton.toolTip = applyProblem or _("Grade the selected volume and show the lesion map.")
        batchProblem = self.logic.batchProblem(parameters)
        self.ui.runBatchButton.enabled = batchProblem is None
        self.ui.runBatchButton.toolTip = batchProblem or _(
            "Grade every volume file of the input folder in a separate process; Slicer stays usable.")
        self.batchCancelButton.enabled = self.logic.isBatchRunning() and not self.logic.batchProcess.cancelling

        if parameters.inputVolume is not self._shownVolume:
            self._showResults()

    def _showResults(self) -> None:
        """Show the results stored in the scene for the selected input (none yet: say so)."""
        volumeNode = self._parameterNode.inputVolume if self._parameterNode else None
        self._shownVolume = volumeNode
        nodes = self.logic.resultNodes(volumeNode)
        self.ui.resultTableView.setMRMLTableNode(nodes.table_node if nodes else None)
        for widget in (self.ui.jumpButton, self.ui.showPlotButton, self.ui.showResultsButton,
                       self.ui.show3DButton, self.ui.overlayCheckBox, self.ui.overlayKindComboBox,
                       self.ui.opacitySliderWidget):
            widget.enabled = nodes is not None
        if nodes is None:
            self.ui.resultLabel.text = _("No result yet for {name}.").format(name=volumeNode.GetName()) \
                if volumeNode else _("No result yet.")
            return
        self.ui.resultLabel.text = self.logic.resultSummary(nodes)

    def log(self, message: str) -> None:
        """Append a line to the log box (the logic reports warnings and batch progress here)."""
        self.ui.logTextEdit.appendPlainText(message)

    def onApplyButton(self) -> None:
        volumeNode = self._parameterNode.inputVolume
        modelPath, _problem = self.logic.modelPathOrProblem(self._parameterNode)
        with slicer.util.tryWithErrorDisplay(_("Failed to grade the volume."), waitCursor=True):
            self.logic.checkTorch()
            result = self.logic.process(volumeNode, modelPath, self._parameterNode.device)
            if modelPath is not None:
                slicer.app.userSettings().setValue(LAST_MODEL_FILE_SETTING, str(modelPath))
            self._showResults()
            if self._parameterNode.showOverlay:
                self.logic.showOverlay(volumeNode, self.logic.overlayNode(result.nodes, self._parameterNode.overlayKind),
                                       True, self._parameterNode.overlayOpacity)

    def onOverlayChanged(self, *args) -> None:
        if self._connectingGui or not self._parameterNode:
            return
        nodes = self.logic.resultNodes(self._parameterNode.inputVolume)
        if nodes is None:
            return
        self.logic.showOverlay(self._parameterNode.inputVolume,
                               self.logic.overlayNode(nodes, self.ui.overlayKindComboBox.currentText),
                               self.ui.overlayCheckBox.checked, self.ui.opacitySliderWidget.value)

    def onJumpButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to jump to the most-attended slice.")):
            volumeNode = self._parameterNode.inputVolume
            sliceIndex, _ras = self.logic.jumpToMostAttendedSlice(volumeNode, self.logic.resultNodes(volumeNode))
            slicer.util.showStatusMessage(
                _("{name}: slice {index} has the most attention.").format(name=volumeNode.GetName(),
                                                                         index=sliceIndex), 3000)

    def onShowPlotButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the attention plot.")):
            nodes = self.logic.resultNodes(self._parameterNode.inputVolume)
            if nodes is not None:
                slicer.modules.plots.logic().ShowChartInLayout(nodes.plot_chart_node)

    def onShowResultsButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the results."), waitCursor=True):
            self.logic.showResults(self._parameterNode.inputVolume)

    def onShow3DButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the results in 3D."), waitCursor=True):
            self.logic.show3D(self._parameterNode.inputVolume)

    def onRunBatchButton(self) -> None:
        parameters = self._parameterNode
        modelPath, _problem = self.logic.modelPathOrProblem(parameters)
        with slicer.util.tryWithErrorDisplay(_("Failed to start the batch."), waitCursor=True):
            self.logic.checkTorch()  # the batch process runs this same Python, and its torch
            self.logic.startBatch([parameters.batchInputFolder], parameters.batchOutputFolder, modelPath,
                                  scene=parameters.batchWriteScenes, device=parameters.device)
            if modelPath is not None:
                slicer.app.userSettings().setValue(LAST_MODEL_FILE_SETTING, str(modelPath))
            self.ui.batchProgressBar.value = 0
            self.ui.batchProgressBar.format = _("starting the batch process...")
            self.batchTimer.start()
        self._onParameterNodeModified()

    def onCancelBatchButton(self) -> None:
        self.logic.cancelBatch()  # returns at once: the end arrives through the timer like any other
        self.ui.batchProgressBar.format = _("cancelling...")
        self._onParameterNodeModified()

    def onBatchTimer(self) -> None:
        for event in self.logic.batchEvents():  # also logs them, and loads summary.tsv at the end
            progress = self.logic.batchProgress(event)
            if progress is not None:
                done, total, text = progress
                self.ui.batchProgressBar.maximum = max(total, 1)
                self.ui.batchProgressBar.value = done
                self.ui.batchProgressBar.format = text.replace("%", "%%")  # %v, %m, %p are placeholders
            if event["stage"] == "exit":
                self.batchTimer.stop()
                self._onBatchFinished(event)
        self._onParameterNodeModified()

    def _onBatchFinished(self, event: dict) -> None:
        summaryNode = self.logic.batchSummaryNode
        if event["ok"] and summaryNode is not None:
            self.ui.batchProgressBar.format = summaryNode.GetDescription().replace("%", "%%")
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(summaryNode.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()
        elif event["cancelled"]:
            self.ui.batchProgressBar.format = _("cancelled")
        else:
            self.ui.batchProgressBar.format = _("failed")
            slicer.util.errorDisplay(_("Batch prediction failed: {error}").format(error=event.get("error")),
                                     detailedText=self.logic.batchProcess.stderr_tail)


#
# TwoFiveCNNLogic
#


class TwoFiveCNNLogic(ScriptedLoadableModuleLogic):
    """MRML <-> TwoFiveCNNLib. Usable from the Python console without the widget::

        logic = slicer.util.getModuleLogic("TwoFiveCNN")  # or TwoFiveCNNLogic()
        result = logic.process(getNode("CTChest"))        # bundled demo model; or modelPath="my.pt"
        print(result.label, result.probabilities)
        logic.showOverlay(getNode("CTChest"), result.lesion_map_node)
        logic.jumpToMostAttendedSlice(getNode("CTChest"), result)
        batch = logic.runOnFiles(["/data/cts"], "/data/out", modelPath="my.pt")  # here, blocking
        logic.startBatch(["/data/cts"], "/data/out", modelPath="my.pt")  # in a child process
        events = logic.batchEvents()  # call repeatedly (the panel does, from a timer)
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.logCallback = None
        self._model = None
        self._modelKey = None
        self.batchProcess = None  # TwoFiveCNNLib.app.processes.PredictionProcess of the last batch
        self.batchSummaryNode = None  # its summary.tsv as a table node, once it has run to its end

    def getParameterNode(self):
        return TwoFiveCNNParameterNode(super().getParameterNode())

    def log(self, message: str) -> None:
        logger.info(message)
        if self.logCallback:
            self.logCallback(message)

    def checkTorch(self, askConfirmation: bool = True, log=None):
        """Make sure a recent enough PyTorch is importable and return the ``torch`` module.

        Installs PyTorch through the PyTorch extension when it is missing: first says in the log
        (``log``, default :meth:`log`) what is downloaded and how long it may take, then asks the user
        (unless ``askConfirmation`` is False) with the wait cursor of the calling button lifted, so the
        question does not look like a busy application. Never installs while Slicer runs its tests:
        a build machine must not download gigabytes (the self-tests skip instead). Call it from an
        action the user started, never at import time.
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
            if slicer.app.testingEnabled():
                raise RuntimeError("PyTorch is not installed, and nothing is installed while Slicer runs its "
                                   "tests. Install it in the PyTorch Utils module.")
            (log or self.log)(TORCH_INSTALL_NOTICE)
            if askConfirmation and not _confirmWithoutWaitCursor(
                    TORCH_INSTALL_NOTICE + "\n\n" + _("Install PyTorch now?")):
                torch = None
            else:
                # PyTorchUtils' own question would repeat ours, without the sizes: ours was asked.
                torch = torchLogic.installTorch(askConfirmation=False,
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
        logger.debug(f"TwoFiveCNN: using PyTorch {torch.__version__}")
        return torch

    # ------------------------------------------------------------------ what the panel allows

    def modelPathOrProblem(self, parameters):
        """``(modelPath, None)`` for the model the parameters choose (None: the bundled demo model),
        or ``(None, why there is none)``."""
        if parameters.useDemoModel:
            if BUNDLED_MODEL_PATH.is_file():
                return None, None
            return None, _("The demo model is not included in this build: choose a model file.")
        if not path_is_set(parameters.modelPath):
            return None, _("Choose a model file (.pt), or use the bundled demo model.")
        return pathlib.Path(parameters.modelPath), None

    def applyProblem(self, parameters) -> "str | None":
        """Why Apply cannot be pressed yet, or None."""
        if not parameters.inputVolume:
            return _("Select a chest CT volume first.")
        problem = self.modelPathOrProblem(parameters)[1]
        if problem:
            return problem
        if self.isBatchRunning():
            # One model at a time: a second one beside the batch's could run the GPU out of memory.
            return _("A batch is running: wait for it to finish, or cancel it.")
        return None

    def batchProblem(self, parameters) -> "str | None":
        """Why Run on folder cannot be pressed yet, or None."""
        if self.isBatchRunning():
            return _("A batch is running: wait for it to finish, or cancel it.")
        if not (path_is_set(parameters.batchInputFolder) and path_is_set(parameters.batchOutputFolder)):
            return _("Choose an input folder and an output folder first.")
        problem = self.modelPathOrProblem(parameters)[1]
        if problem:
            return problem
        try:
            self._batchPaths([parameters.batchInputFolder], parameters.batchOutputFolder)
        except ValueError as error:
            return str(error)
        return None

    def loadModel(self, modelPath=None, device: str = "auto"):
        """The model of a file (None: the bundled demo model), loaded once and reused.

        The last model stays loaded, keyed by its path, the device and the file's time stamp, so
        grading many volumes reads the file once and a retrained file is picked up.
        """
        self.checkTorch()
        from TwoFiveCNNLib.inference.engines import BUNDLED_MODEL, load_model

        path = pathlib.Path(modelPath) if path_is_set(modelPath) else BUNDLED_MODEL
        try:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None  # load_model says clearly that the file is missing
        device = device_option(device)
        key = (str(path.resolve()), device, stamp)
        if self._modelKey != key:
            self._model = self._modelKey = None  # release the previous model (GPU memory) first
            self._model = load_model(path if path_is_set(modelPath) else None, device)
            self._modelKey = key
            self.log(f"Loaded model {self._model.name} ({path.name}) on {device}")
        return self._model

    def process(self, inputVolume, modelPath=None, device: str = "auto"):
        """Grade ``inputVolume`` and show the result in the scene; returns a ``NodePrediction``.

        ``modelPath`` None uses the bundled synthetic-data demo model. Re-running on the same
        volume updates the same result nodes. A failure (unreadable model, unusable volume) adds
        no node: loading and inference happen before any node is touched.
        """
        from TwoFiveCNNLib.scene.nodes import predict_volume_node

        model = self.loadModel(modelPath, device)
        result = predict_volume_node(inputVolume, scene=slicer.mrmlScene, model=model)
        for warning in result.prediction.warnings:
            self.log(f"{inputVolume.GetName()}: {warning}")
        return result

    def runOnFiles(self, paths, outputDir, modelPath=None, scene: bool = False, device: str = "auto",
                   progress=None):
        """Grade volume files, DICOM folders or folders of volume files into ``outputDir``.

        The same code as ``twofivecnn predict``: per study a JSON, a lesion map volume and a PNG
        (and with ``scene`` a .mrml), plus ``summary.tsv``. A bad study is reported in the returned
        ``BatchResult.failures`` and the others still run. ``progress(done, total, path)`` is called
        after every study. It runs here and blocks until done (console scripts); the panel uses
        :meth:`startBatch`, which runs the same code in a child process.
        """
        paths, outputDir = self._batchPaths(paths, outputDir, modelPath)
        from TwoFiveCNNLib.inference.outputs import predict_batch
        from TwoFiveCNNLib.scene.nodes import save_prediction_scene

        model = self.loadModel(modelPath, device)
        outputDir.mkdir(parents=True, exist_ok=True)
        return predict_batch(model, paths, outputDir, save_prediction_scene if scene else None, progress=progress)

    @staticmethod
    def _batchPaths(paths, outputDir, modelPath=None) -> "tuple[list[pathlib.Path], pathlib.Path]":
        """The inputs and the output folder of a batch, checked before any work starts."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        paths = [pathlib.Path(p) for p in paths if path_is_set(p)]
        if not paths:
            raise ValueError(_("Choose the volume files or the folder to grade."))
        if not path_is_set(outputDir):
            raise ValueError(_("Choose an output folder."))
        outputDir = pathlib.Path(outputDir)
        from TwoFiveCNNLib.io.manifest import refuse_overlap

        # Outputs include volume files (the lesion maps): among the inputs, the next run would grade them.
        refuse_overlap([outputDir], [*paths, modelPath if path_is_set(modelPath) else None], "predict")
        return paths, outputDir

    # ------------------------------------------------------------------ batch in the background

    def startBatch(self, paths, outputDir, modelPath=None, scene: bool = False, device: str = "auto"):
        """Grade like :meth:`runOnFiles`, in a child process (``twofivecnn predict --progress-json``).

        Returns its ``PredictionProcess`` at once; :meth:`batchEvents` collects the progress and, at
        the end, shows ``summary.tsv`` as a table node; :meth:`cancelBatch` stops it. Slicer stays
        usable meanwhile, and the memory the batch took (the GPU's too) is freed when the child exits.
        """
        from TwoFiveCNNLib.app.processes import PredictionProcess, prediction_arguments

        if self.isBatchRunning():
            raise RuntimeError(_("A batch is already running: cancel it first."))
        paths, outputDir = self._batchPaths(paths, outputDir, modelPath)
        if path_is_set(modelPath) and not os.path.isfile(modelPath):
            raise ValueError(_("There is no such model file: {path}").format(path=modelPath))
        args = prediction_arguments(modelPath if path_is_set(modelPath) else None, device_option(device), scene)
        self.batchProcess = PredictionProcess(paths, outputDir, args, python=python_executable())
        self.batchSummaryNode = None
        self.log(_("Grading {inputs} into {output} in a separate process.").format(
            inputs=", ".join(str(p) for p in paths), output=outputDir))
        return self.batchProcess.start()

    def isBatchRunning(self) -> bool:
        return self.batchProcess is not None and self.batchProcess.is_running

    def batchEvents(self) -> "list[dict]":
        """New progress events of the batch, also logged; never blocks.

        When the batch has run to its end (some studies may have failed), its ``summary.tsv`` becomes
        a table node, :attr:`batchSummaryNode`. Call it from the main thread (the panel's timer): the
        scene is changed here, never on the threads that read the process.
        """
        if self.batchProcess is None:
            return []
        from TwoFiveCNNLib.io.progress import describe_event

        events = self.batchProcess.poll()
        for event in events:
            self.log(describe_event(event))
            if event["stage"] == "exit" and event["ok"]:
                self.batchSummaryNode = self.loadBatchSummary(self.batchProcess.summary_path)
        return events

    @staticmethod
    def batchProgress(event: dict) -> "tuple[int, int, str] | None":
        """``(studies done, total, text)`` for the progress bar after a batch event; None if it has no count."""
        done, total = event.get("studies_done"), event.get("studies")
        if event.get("stage") != "predict" or not isinstance(done, int) or not isinstance(total, int):
            return None
        text = _("{done}/{total} studies").format(done=done, total=total)
        if event.get("current"):
            text += ", " + _("now {name}").format(name=event["current"])
        return done, total, text

    def cancelBatch(self, wait: bool = False) -> None:
        """Stop the batch process and everything it started; studies already graded keep their outputs.

        ``wait`` False returns at once (the exit event follows through :meth:`batchEvents`); True
        returns once no process of the batch is left (console scripts, module cleanup).
        """
        if self.batchProcess is not None:
            self.batchProcess.cancel(wait=wait)

    def loadBatchSummary(self, summaryPath):
        """A batch's ``summary.tsv`` as a table node; loading it again updates the same node."""
        from TwoFiveCNNLib.scene.batch_nodes import summary_table_node

        return summary_table_node(slicer.mrmlScene, summaryPath)

    # ------------------------------------------------------------------ sample data

    def loadSamplePhantom(self, label: int = SAMPLE_PHANTOM_LABEL, seed: int = SAMPLE_PHANTOM_SEED,
                          name: "str | None" = None, shape_zyx=None):
        """A synthetic chest CT of MosMed class ``label`` as a volume node, made here (no download).

        What the Sample Data module's TwoFiveCNN phantom loads and the self-tests grade: a phantom
        of ``TwoFiveCNNLib.data.phantoms``, not a patient, fully determined by ``seed``.
        """
        from TwoFiveCNNLib.data.phantoms import generate_phantom

        phantom = generate_phantom(label, seed, shape_zyx=shape_zyx)
        return slicer.util.addVolumeFromArray(phantom.array_kji, phantom.geometry.ijk_to_ras(),
                                              name=name or SAMPLE_PHANTOM_NAME)

    def resultNodes(self, inputVolume):
        """The result nodes of the last run on ``inputVolume`` (``PredictionNodes``), or None."""
        if inputVolume is None:
            return None
        from TwoFiveCNNLib.scene.nodes import find_prediction_nodes

        return find_prediction_nodes(inputVolume)

    def resultSummary(self, nodes) -> str:
        """One line for the panel: grade, its probability, and any warning or demo-model notice."""
        from TwoFiveCNNLib.scene.nodes import ATTRIBUTE_PREFIX

        table = nodes.table_node
        label = table.GetAttribute(ATTRIBUTE_PREFIX + "label") or "?"
        classes = table.GetTable().GetColumnByName("class")
        probabilities = table.GetTable().GetColumnByName("probability")
        probability = next((probabilities.GetValue(row) for row in range(classes.GetNumberOfValues())
                            if classes.GetValue(row) == label), float("nan"))
        lines = [_("{label} (probability {probability:.2f})").format(label=label, probability=probability)]
        involvement = nodes.involvement_node
        if involvement is not None and involvement.GetNumberOfRows() > 0:
            lines.append(_("lungs {volume:.0f} mL, {percent} % involved ({grade} by involvement)").format(
                volume=involvement.GetTable().GetValue(0, 1).ToDouble(),
                percent=involvement.GetAttribute(ATTRIBUTE_PREFIX + "involvedPercent"),
                grade=involvement.GetAttribute(ATTRIBUTE_PREFIX + "involvementGrade")))
            added = float(involvement.GetAttribute(ATTRIBUTE_PREFIX + "lesionNetworkAddedMl") or 0)
            if added:
                lines.append(_("{added:.0f} mL of the lungs added by the lesion network").format(added=added))
        for key in ("notice", "warnings"):
            text = table.GetAttribute(ATTRIBUTE_PREFIX + key)
            if text:
                lines.append(text)
        return "\n".join(lines)

    @staticmethod
    def overlayNode(nodes, kind: str = "lesion map"):
        """The result node the overlay choice ``kind`` shows: the lesion map, or the lung band labels
        (the lesion map when no lungs were measured)."""
        if kind not in OVERLAY_KINDS:
            raise ValueError(f"overlay {kind!r}: choose one of {list(OVERLAY_KINDS)}.")
        if OVERLAY_KINDS[kind] == "bands" and getattr(nodes, "bands_node", None) is not None:
            return nodes.bands_node
        return nodes.lesion_map_node

    def showOverlay(self, inputVolume, overlayVolume, visible: bool = True, opacity: float = 0.4) -> None:
        """``overlayVolume`` (the lesion map or the lung bands) over ``inputVolume`` in every slice view
        (or remove it)."""
        from TwoFiveCNNLib.scene.nodes import show_overlay

        show_overlay(inputVolume, overlayVolume, visible, opacity)

    def _requireResult(self, inputVolume, nodes=None):
        nodes = nodes if nodes is not None else self.resultNodes(inputVolume)
        if nodes is None:
            raise ValueError(_("{name} has no result yet: press Apply first.").format(
                name=inputVolume.GetName() if inputVolume else "The input"))
        return nodes

    def showResults(self, inputVolume, nodes=None) -> int:
        """Switch to the results layout (slice views, 3D view, the involvement table and the attention
        chart) bound to ``inputVolume``'s result; returns the layout's number."""
        from TwoFiveCNNLib.scene.layout import show_results_layout

        nodes = self._requireResult(inputVolume, nodes)
        table = nodes.involvement_node if nodes.involvement_node is not None else nodes.table_node
        return show_results_layout(inputVolume.GetScene() or slicer.mrmlScene, table, nodes.plot_chart_node)

    def show3D(self, inputVolume, nodes=None) -> list:
        """Build the lungs' and the involvement's 3D surfaces (on demand: a batch never pays for them),
        show them and centre the 3D views on them; returns the segmentation nodes shown."""
        from TwoFiveCNNLib.scene.segmentations import centre_3d_views, show_segmentations_3d

        nodes = self._requireResult(inputVolume, nodes)
        shown = [node for node in (nodes.lung_segmentation_node, nodes.involvement_segmentation_node) if node]
        if not shown:
            raise ValueError(_("{name}'s result has no lung segmentation: run Apply again.").format(
                name=inputVolume.GetName()))
        show_segmentations_3d(shown)
        centre_3d_views(inputVolume.GetScene() or slicer.mrmlScene, shown)
        return shown

    def jumpToMostAttendedSlice(self, inputVolume, nodes=None):
        """Centre every slice view on the input slice with the most attention; returns ``(k, ras)``.

        ``nodes`` is what :meth:`process` returned or :meth:`resultNodes` finds (None: look it up).
        """
        from TwoFiveCNNLib.scene.nodes import ATTRIBUTE_PREFIX, jump_to_slice_ras

        nodes = self._requireResult(inputVolume, nodes)
        sliceIndex = int(nodes.table_node.GetAttribute(ATTRIBUTE_PREFIX + "mostAttendedSlice"))
        ras = jump_to_slice_ras(inputVolume, sliceIndex)
        scene = inputVolume.GetScene() or slicer.mrmlScene
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            scene.GetNthNodeByClass(i, "vtkMRMLSliceNode").JumpSliceByCentering(*ras)
        return sliceIndex, ras

    def volumeFromNode(self, volumeNode):
        """The node's voxels and geometry as a TwoFiveCNNLib ``Volume`` (canonical orientation).

        A copy of the voxels; a parent transform is ignored (and reported in ``warnings``), because
        results are mapped back onto this same voxel grid.
        """
        from TwoFiveCNNLib.scene.nodes import volume_from_node

        return volume_from_node(volumeNode)

    def preprocessVolumeNode(self, volumeNode, config=None) -> np.ndarray:
        """Window, crop and resample the node's voxels to the model grid.

        Returns a float32 array ``(slices, in_plane, in_plane)`` with values in 0..1. ``config`` is a
        ``TwoFiveCNNLib.transforms.preprocess.PreprocessConfig`` (default settings when None); once a model is
        loaded, pass the model's own config. Needs no PyTorch: the preprocessing is NumPy.
        """
        from TwoFiveCNNLib.transforms.preprocess import PreprocessConfig, to_model_grid

        volume = self.volumeFromNode(volumeNode)
        for warning in volume.warnings:
            logger.warning(warning)
        grid, _mapping = to_model_grid(volume, config if config is not None else PreprocessConfig())
        return grid


def _confirmWithoutWaitCursor(question: str) -> bool:
    """Ask ``question`` (OK / Cancel) with the normal cursor, then put the caller's cursors back.

    Buttons run their work under ``tryWithErrorDisplay(..., waitCursor=True)``: a question shown under
    that busy cursor looks as if it could not be answered. Override cursors stack, so all are lifted
    and restored in order, and the install that follows runs under the wait cursor again.
    """
    app, lifted = slicer.app, []
    while app.overrideCursor() is not None and len(lifted) < 100:
        lifted.append(app.overrideCursor().shape())
        app.restoreOverrideCursor()
    try:
        return bool(slicer.util.confirmOkCancelDisplay(question, windowTitle=_("Install PyTorch")))
    finally:
        for shape in reversed(lifted):
            app.setOverrideCursor(shape)


def _versionAtLeast(version: str, minimum: tuple) -> bool:
    """Whether a version string such as "2.3.1+cu121" is at least ``minimum`` (major, minor)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return bool(match) and (int(match.group(1)), int(match.group(2))) >= tuple(minimum)


#
# TwoFiveCNNTest
#


class TwoFiveCNNTest(ScriptedLoadableModuleTest):
    """Self-tests on synthetic volume nodes, run with "Reload and Test" or by CTest.

    They exercise the real logic and TwoFiveCNNLib. The tests that need PyTorch check for it first
    (:meth:`_torchOrSkip`): where Slicer's build machines run them without PyTorch, they are skipped
    with a message rather than install it. The grading tests use the bundled demo model and are
    skipped, with a message, while it is not bundled; the project's pytest suite runs them with a small
    model it trains itself (``modelPath``).
    """

    modelPath = None  # None: the bundled demo model

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_versionAtLeast, self.test_volumeFromNode_keeps_geometry,
                     self.test_preprocessVolumeNode_grid, self.test_preprocessVolumeNode_ignores_storage_order,
                     self.test_process_phantom_volume, self.test_process_failure_adds_no_nodes,
                     self.test_runOnFiles_reports_bad_studies, self.test_sample_phantom,
                     self.test_panel_says_why_buttons_are_disabled):
            self.setUp()
            test()

    def _torchOrSkip(self) -> bool:
        """Whether a test that needs PyTorch may go on; its first call.

        While Slicer runs its tests (``--testing``, the build machines) a missing PyTorch is not
        installed: the test says so and is skipped. Otherwise (Reload and Test) PyTorch is installed
        as Apply does it, after asking.
        """
        if torch_importable():
            return True
        if slicer.app.testingEnabled():
            self.delayDisplay(TORCH_SKIP_MESSAGE)
            return False
        TwoFiveCNNLogic().checkTorch()
        return True

    def _modelOrSkip(self):
        """``(usable, modelPath)``: the model to grade with, or False after saying why the test is skipped."""
        if not self._torchOrSkip():
            return False, None
        path = pathlib.Path(self.modelPath) if self.modelPath else BUNDLED_MODEL_PATH
        if not path.is_file():
            self.delayDisplay(f"Skipped: no model at {path} (the demo model is not bundled yet).")
            return False, None
        return True, self.modelPath

    @staticmethod
    def _phantomNode(label: int = 3, seed: int = 11):
        """A synthetic chest CT of MosMed class ``label`` as a volume node, in its stored orientation:
        the module's sample data (:meth:`TwoFiveCNNLogic.loadSamplePhantom`)."""
        return TwoFiveCNNLogic().loadSamplePhantom(label, seed, name=f"Phantom CT-{label}")

    @staticmethod
    def _waitForBatch(logic, timeout: float = 300.0) -> list:
        """Collect the background batch's events as the panel's timer does, until its exit event."""
        import time

        events, deadline = [], time.monotonic() + timeout
        while not events or events[-1]["stage"] != "exit":
            if time.monotonic() > deadline:
                logic.cancelBatch(wait=True)
                raise AssertionError(f"the batch did not finish in {timeout:.0f} s")
            if hasattr(slicer.app, "processEvents"):
                slicer.app.processEvents()
            events += logic.batchEvents()
            time.sleep(0.1)
        return events

    @staticmethod
    def _ijkToRas(volumeNode) -> np.ndarray:
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    @staticmethod
    def _syntheticChest(shape=(24, 72, 64)):
        """A small CT-2 phantom chest in HU, numpy [k, j, i] (the library's one phantom generator)."""
        from TwoFiveCNNLib.data.phantoms import generate_phantom

        return generate_phantom(2, seed=5, orientation="LPS", shape_zyx=shape).array_kji

    def test_versionAtLeast(self):
        self.assertTrue(_versionAtLeast("2.3.0", TORCH_MINIMUM_VERSION))
        self.assertFalse(_versionAtLeast("2.2.2", TORCH_MINIMUM_VERSION))  # built for NumPy 1
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
        if not self._torchOrSkip():
            return
        logic = TwoFiveCNNLogic()
        logic.checkTorch()  # and recent enough
        from TwoFiveCNNLib.transforms.preprocess import PreprocessConfig

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
        if not self._torchOrSkip():
            return
        logic = TwoFiveCNNLogic()
        logic.checkTorch()  # and recent enough
        from TwoFiveCNNLib.transforms.preprocess import PreprocessConfig

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


    def test_process_phantom_volume(self):
        self.delayDisplay("Grading a synthetic phantom volume")
        usable, modelPath = self._modelOrSkip()
        if not usable:
            return
        logic = TwoFiveCNNLogic()
        volumeNode = self._phantomNode()
        result = logic.process(volumeNode, modelPath)

        probabilities = result.probabilities
        self.assertEqual(len(probabilities), 5)
        self.assertAlmostEqual(sum(probabilities.values()), 1.0, places=4)
        self.assertEqual(result.label, max(probabilities, key=probabilities.get))
        table = result.table_node.GetTable()
        self.assertEqual(table.GetNumberOfRows(), len(probabilities))
        lesionMap = result.lesion_map_node
        self.assertEqual(lesionMap.GetImageData().GetDimensions(), volumeNode.GetImageData().GetDimensions())
        np.testing.assert_allclose(self._ijkToRas(lesionMap), self._ijkToRas(volumeNode), atol=1e-9)
        slices = volumeNode.GetImageData().GetDimensions()[2]
        self.assertEqual(result.plot_chart_node.GetPlotSeriesNode().GetTableNode().GetNumberOfRows(), slices)
        self.assertIn(logic.resultSummary(result.nodes).split(" ")[0], probabilities)

        # A second run reuses the loaded model and updates the same nodes.
        count = slicer.mrmlScene.GetNumberOfNodes()
        model = logic.loadModel(modelPath)
        again = logic.process(volumeNode, modelPath)
        self.assertIs(logic.loadModel(modelPath), model)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.assertEqual(again.table_node.GetID(), result.table_node.GetID())
        self.assertEqual(logic.resultNodes(volumeNode).lesion_map_node.GetID(), lesionMap.GetID())

        # Overlay and jump act on the scene's slice views (created here when Slicer has none, headless).
        if slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode") == 0:
            slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        if slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceNode") == 0:
            slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode")
        logic.showOverlay(volumeNode, lesionMap, True, 0.3)
        composite = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
        self.assertEqual(composite.GetForegroundVolumeID(), lesionMap.GetID())
        self.assertEqual(composite.GetBackgroundVolumeID(), volumeNode.GetID())
        self.assertAlmostEqual(composite.GetForegroundOpacity(), 0.3)
        logic.showOverlay(volumeNode, lesionMap, False)
        self.assertIsNone(composite.GetForegroundVolumeID())
        sliceIndex, ras = logic.jumpToMostAttendedSlice(volumeNode, result)
        self.assertEqual(sliceIndex, result.prediction.most_attended_slice)
        sliceToRas = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSliceNode").GetSliceToRAS()
        np.testing.assert_allclose([sliceToRas.GetElement(row, 3) for row in range(3)], ras, atol=1e-6)
        layoutId = logic.showResults(volumeNode, result)
        self.assertEqual(slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode").GetViewArrangement(), layoutId)
        for segmentationNode in logic.show3D(volumeNode, result):
            self.assertTrue(segmentationNode.GetSegmentation().ContainsRepresentation("Closed surface"))
        self.delayDisplay("Test passed")

    def test_process_failure_adds_no_nodes(self):
        self.delayDisplay("A model file that is not a model fails without leaving nodes behind")
        if not self._torchOrSkip():
            return
        import tempfile

        logic = TwoFiveCNNLogic()
        volumeNode = slicer.util.addVolumeFromArray(self._syntheticChest(), np.diag([0.8, 0.8, 2.0, 1.0]))
        count = slicer.mrmlScene.GetNumberOfNodes()
        with tempfile.TemporaryDirectory(dir=slicer.app.temporaryPath) as folder:
            notAModel = pathlib.Path(folder) / "notes.pt"
            notAModel.write_text("not a model\n", encoding="utf-8")
            with self.assertRaises(ValueError):
                logic.process(volumeNode, notAModel)
            with self.assertRaises(ValueError):
                logic.process(volumeNode, pathlib.Path(folder) / "missing.pt")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.assertIsNone(logic.resultNodes(volumeNode))
        with self.assertRaises(ValueError):
            logic.jumpToMostAttendedSlice(volumeNode)
        self.delayDisplay("Test passed")

    def test_runOnFiles_reports_bad_studies(self):
        self.delayDisplay("Batch prediction on a folder with one good and one broken study")
        usable, modelPath = self._modelOrSkip()
        if not usable:
            return
        import tempfile

        from TwoFiveCNNLib.data.phantoms import generate_phantom
        from TwoFiveCNNLib.io.volume import write_volume

        logic = TwoFiveCNNLogic()
        count = slicer.mrmlScene.GetNumberOfNodes()
        with tempfile.TemporaryDirectory(dir=slicer.app.temporaryPath) as folder:
            studies, output = pathlib.Path(folder) / "studies", pathlib.Path(folder) / "out"
            studies.mkdir()
            phantom = generate_phantom(2, seed=5)
            good = write_volume(phantom.array_kji, phantom.geometry, studies / "good.nrrd")
            bad = studies / "broken.nrrd"
            bad.write_text("not a volume\n", encoding="utf-8")
            with self.assertRaises(ValueError):
                logic.runOnFiles(studies, studies, modelPath)
            result = logic.runOnFiles(studies, output, modelPath)
            self.assertEqual(list(result.predictions), [str(good)])
            self.assertEqual(list(result.failures), [str(bad)])
            rows = (output / "summary.tsv").read_text(encoding="utf-8").splitlines()
            self.assertEqual(len(rows), 3)
            self.assertTrue((output / "good.json").is_file())
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)  # the batch leaves the scene alone

            # The same batch in a separate process, as the panel runs it; its summary becomes a table node.
            self.delayDisplay("The same batch in a background process")
            background = pathlib.Path(folder) / "background"
            logic.startBatch(studies, background, modelPath, device="CPU")
            events = self._waitForBatch(logic)
            self.assertTrue(events[-1]["ok"], events[-1])  # ran to its end, one study failed
            self.assertEqual([e["studies_done"] for e in events if e["stage"] == "predict"], [0, 1, 2])
            table = logic.batchSummaryNode
            self.assertEqual(table.GetNumberOfRows(), 2)
            statuses = table.GetTable().GetColumnByName("status")
            self.assertEqual(sorted(statuses.GetValue(row) for row in range(2)), ["failed", "ok"])
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count + 1)
            self.assertIs(logic.loadBatchSummary(background / "summary.tsv"), table)  # updated, not added
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count + 1)
            self.assertTrue((background / "good.json").is_file())
        self.delayDisplay("Test passed")

    def test_sample_phantom(self):
        self.delayDisplay("The sample phantom: in the Sample Data module, made by this module")
        registerSampleData()
        registerSampleData()  # as after a module reload: still one entry
        try:
            import SampleData
        except ImportError:
            SampleData = None  # Python without the Slicer application: registering did nothing
        if SampleData is not None:
            sources = [source for source in SampleData.SampleDataLogic.sampleDataSourcesByCategory(
                SAMPLE_DATA_CATEGORY) if source.sampleName == SAMPLE_PHANTOM_NAME]
            self.assertEqual(len(sources), 1)
            node = sources[0].customDownloader(sources[0])  # what its button does
        else:
            node = TwoFiveCNNLogic().loadSamplePhantom()
        self.assertEqual(node.GetName(), SAMPLE_PHANTOM_NAME)
        array = slicer.util.arrayFromVolume(node)
        self.assertGreaterEqual(int(array.min()), -1024)  # Hounsfield units
        self.assertGreater(float((array < -500).mean()), 0.05)  # air-filled lungs in a body
        again = TwoFiveCNNLogic().loadSamplePhantom()  # the same seed: the same phantom
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(again), array)
        self.delayDisplay("Test passed")

    def test_panel_says_why_buttons_are_disabled(self):
        self.delayDisplay("Apply and Run on folder say why they cannot be pressed")
        import tempfile
        import types

        logic = TwoFiveCNNLogic()
        with tempfile.TemporaryDirectory(dir=slicer.app.temporaryPath) as folder:
            folder = pathlib.Path(folder)
            unset = pathlib.Path()  # how an empty path field reads
            parameters = types.SimpleNamespace(inputVolume=None, useDemoModel=False, modelPath=unset,
                                               batchInputFolder=unset, batchOutputFolder=unset)
            self.assertIn("volume", logic.applyProblem(parameters))
            parameters.inputVolume = logic.loadSamplePhantom(shape_zyx=(8, 32, 32))
            self.assertIn("model file", logic.applyProblem(parameters))
            parameters.modelPath = folder / "model.pt"
            self.assertIsNone(logic.applyProblem(parameters))
            self.assertEqual(logic.modelPathOrProblem(parameters), (folder / "model.pt", None))
            parameters.useDemoModel = True
            self.assertEqual(logic.applyProblem(parameters) is None, BUNDLED_MODEL_PATH.is_file())
            parameters.useDemoModel = False
            self.assertIn("folder", logic.batchProblem(parameters))
            parameters.batchInputFolder = parameters.batchOutputFolder = folder
            self.assertIn("the output folder is the input", logic.batchProblem(parameters))
            parameters.batchOutputFolder = folder / "out"
            self.assertIsNone(logic.batchProblem(parameters))
        self.delayDisplay("Test passed")
