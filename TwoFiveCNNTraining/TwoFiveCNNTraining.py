"""TwoFiveCNN Training: build a labelled chest CT dataset and train a TwoFiveCNN model on it in Slicer.

A thin Slicer front end over TwoFiveCNNLib, which the TwoFiveCNN module installs into the same
scripted-modules folder: ``scene.training_nodes`` (datasets from volume nodes, curves and metrics as
nodes), ``data.summary``, ``app.processes`` (the training process) and ``io.progress`` (the event
text). Training runs in a separate PythonSlicer process; a timer polls its progress events, so the
GUI never freezes. Only ``app.module_settings`` (no torch, no numpy) is imported when Slicer loads
this module; the rest waits until a method needs it.
"""

import os
import pathlib
from typing import TYPE_CHECKING, Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Light (standard library only); installed by the TwoFiveCNN module, on which this one depends.
from TwoFiveCNNLib.app.module_settings import (
    DEVICE_CHOICES,
    HOMEPAGE,
    LAST_MODEL_FILE_SETTING,
    POLL_INTERVAL_MS,
    TORCH_SKIP_MESSAGE,
    device_option,
    path_is_set,
    python_executable,
    torch_importable,
)

# For annotations only: the methods import these when they need them. Annotations are quoted where
# they hold "X | Y", which Slicer 5.8's Python (3.9) cannot evaluate.
if TYPE_CHECKING:
    from collections.abc import Sequence

    from TwoFiveCNNLib.app.processes import TrainingProcess
    from TwoFiveCNNLib.scene.training_nodes import ProgressNodes


#
# TwoFiveCNNTraining
#


class TwoFiveCNNTraining(ScriptedLoadableModule):
    """Module metadata, shown in Slicer's module panel and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TwoFiveCNN Training")
        self.parent.categories = [_("Chest Imaging Platform")]
        self.parent.dependencies = ["TwoFiveCNN"]
        self.parent.contributors = ["TwoFiveCNN developers"]
        self.parent.helpText = _("""
Trains a TwoFiveCNN model, the two-stage 2.5D network that grades COVID-19 pneumonia severity on chest CT
with the MosMed classes CT-0 to CT-4, on your own labelled studies.
<p><b>Dataset</b>: a folder of studies in class folders CT-0..CT-4 (for example MosMedData) or a .csv
file with path,label columns; or volumes loaded in the scene, labelled in an editable table (they are
exported once as NRRD files beside the model). "Show summary" checks it before training.</p>
<p><b>Training</b> runs in a separate process, so Slicer stays usable: the progress bar, the log and the
curves follow it live; Cancel keeps the last completed epoch and Resume continues from it.</p>
<p><b>Results</b>: per-class metrics and the confusion matrix of the held-out test split; "Use in
TwoFiveCNN" selects the new model in the TwoFiveCNN module.</p>
<p>The demo model bundled with the TwoFiveCNN module was trained on synthetic data only (phantoms, and lesions inserted into one real CT); it is not a
medical device and must not be used for clinical decisions. A model you train is only as good as your
data and its validation.</p>
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
# TwoFiveCNNTrainingParameterNode
#


@parameterNodeWrapper
class TwoFiveCNNTrainingParameterNode:
    """What the user chose, saved with the scene.

    datasetPath: MosMed-style folder (CT-0..CT-4 class folders) or .csv file with path,label columns.
    useSceneVolumes: train on the volumes listed in ``labelTable`` instead of ``datasetPath``.
    labelTable: table with 'volume' (node name or ID) and 'label' (CT-0..CT-4) columns.
    modelPath: model file to write; its checkpoint and split are written beside it.
    stage1Epochs, stage2Epochs, seed: the training settings (``twofivecnn train`` options).
    device: "auto" (GPU when available), "CPU" or "GPU", as in the TwoFiveCNN module.
    """

    datasetPath: pathlib.Path
    useSceneVolumes: bool = False
    labelTable: vtkMRMLTableNode
    modelPath: pathlib.Path
    stage1Epochs: Annotated[int, WithinRange(1, 1000)] = 14
    stage2Epochs: Annotated[int, WithinRange(1, 10000)] = 150
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"


#
# TwoFiveCNNTrainingWidget
#


class TwoFiveCNNTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI only: binds the .ui to the parameter node, polls the training process, shows its results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._plotViewNode = None
        self.timer = None

    def setup(self) -> None:
        # Must stay cheap and silent: the generic tests instantiate the widget. No torch, no dialogs.
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TwoFiveCNNTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = TwoFiveCNNTrainingLogic()
        self.logic.logCallback = self.log

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.summarizeButton.connect("clicked(bool)", self.onSummarizeButton)
        self.ui.addVolumesButton.connect("clicked(bool)", self.onAddVolumesButton)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.resumeButton.connect("clicked(bool)", self.onResumeButton)
        self.ui.useInTwoFiveCNNButton.connect("clicked(bool)", self.onUseInTwoFiveCNNButton)
        self.ui.curveChartComboBox.addItems([_("Training loss"), _("Validation balanced accuracy")])
        self.ui.curveChartComboBox.connect("currentIndexChanged(int)", self.showCurves)
        self.ui.progressBar.value = 0

        # The training process is polled, never waited for: the GUI stays responsive.
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onTimer)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.timer is not None:
            self.timer.stop()
        if self.logic is not None and self.logic.isTraining():
            self.logic.cancelTraining(wait=True)  # no orphan training process after the module is gone
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self._plotViewNode = None
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Binds every widget with a SlicerParameterName property in the .ui to its parameter.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        if parameters is None:
            return
        useScene = parameters.useSceneVolumes
        for widget in (self.ui.labelTableSelector, self.ui.addVolumesButton, self.ui.labelTableView):
            widget.enabled = useScene
        self.ui.datasetPathLineEdit.enabled = not useScene
        self.ui.labelTableView.setMRMLTableNode(parameters.labelTable)
        self._updateButtons()

    def _updateButtons(self) -> None:
        parameters, training = self._parameterNode, self.logic.isTraining()
        problem = self.logic.trainingProblem(parameters) if parameters else _("No parameter node.")
        self.ui.trainButton.enabled = not training and problem is None
        self.ui.trainButton.toolTip = problem or _(
            "Train a model in a separate process; Slicer stays usable.")
        self.ui.cancelButton.enabled = training and not self.logic.process.cancelling
        canResume = not training and parameters is not None and self.logic.canResume(parameters.modelPath)
        self.ui.resumeButton.enabled = canResume
        self.ui.resumeButton.toolTip = (
            _("Continue the interrupted run from its checkpoint, with the same settings.") if canResume
            else _("Only after a cancelled or failed run that left a checkpoint beside the model."))

    def log(self, message: str) -> None:
        """Append a line to the log box (the logic and the training process report here)."""
        self.ui.logTextEdit.appendPlainText(message)

    def onSummarizeButton(self) -> None:
        self.ui.summaryTextEdit.setPlainText("")
        with slicer.util.tryWithErrorDisplay(_("Failed to summarize the dataset."), waitCursor=True):
            path = self.logic.datasetForTraining(self._parameterNode)
            self.ui.summaryTextEdit.setPlainText(self.logic.datasetSummary(path))
            self.log(_("Summarized dataset {path}").format(path=path))

    def onAddVolumesButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to list the scene volumes."), waitCursor=True):
            table = self.logic.updateLabelTable(tableNode=self._parameterNode.labelTable)
            self._parameterNode.labelTable = table
            self.log(_("Listed {count} volumes in {table}: type each one's class (CT-0..CT-4) in the label "
                       "column.").format(count=table.GetNumberOfRows(), table=table.GetName()))

    def onTrainButton(self) -> None:
        self._start(resume=False)

    def onResumeButton(self) -> None:
        self._start(resume=True)

    def _start(self, resume: bool) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start training."), waitCursor=True):
            self.logic.checkTorch()
            parameters = self._parameterNode
            data = self.logic.datasetForTraining(parameters)
            self.logic.startTraining(data, parameters.modelPath, parameters.stage1Epochs,
                                     parameters.stage2Epochs, parameters.seed, parameters.device,
                                     resume=resume)
            if not resume:
                self.ui.logTextEdit.setPlainText("")
                self.ui.progressBar.value = 0
            self.log(_("Training {model} on {data} ({how}).").format(
                model=parameters.modelPath, data=data, how=_("resumed") if resume else _("new run")))
            self.ui.statusLabel.text = _("Starting the training process...")
            self.ui.useInTwoFiveCNNButton.enabled = False
            self.showCurves()
            self.timer.start()
        self._updateButtons()

    def onCancelButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to cancel training.")):
            self.logic.cancelTraining()  # returns at once: the exit event arrives through the timer
        self.ui.statusLabel.text = _("Cancelling...")
        self._updateButtons()

    def onTimer(self) -> None:
        from TwoFiveCNNLib.io.progress import describe_event, event_counts, progress_percent

        for event in self.logic.processEvents():
            text = describe_event(event)
            percent = progress_percent(event)
            if percent is not None:
                self.ui.progressBar.value = percent
            counts = event_counts(event)  # studies read of the subset
            if event["stage"] == "preprocess" and counts is not None and counts[0] != counts[1]:
                self.ui.statusLabel.text = text  # one log line per subset is enough
                continue
            self.log(text)
            self.ui.statusLabel.text = text
            if event["stage"] == "exit":
                self.timer.stop()
                self._onFinished(event)
        self._updateButtons()

    def _onFinished(self, event: dict) -> None:
        if event["returncode"] == 0:
            self.ui.progressBar.value = 100
            with slicer.util.tryWithErrorDisplay(_("Training finished but its metrics could not be shown.")):
                self.showResults(self.logic.lastModelPath)
        elif not event.get("cancelled"):
            slicer.util.errorDisplay(_("Training failed: {error}").format(error=event.get("error")),
                                     detailedText=self.logic.stderrTail())

    def showResults(self, modelPath) -> None:
        metricsNode, confusionNode = self.logic.showMetrics(modelPath)
        self.ui.metricsTableView.setMRMLTableNode(metricsNode)
        self.ui.confusionTableView.setMRMLTableNode(confusionNode)
        self.ui.metricsLabel.text = metricsNode.GetDescription()
        self.ui.useInTwoFiveCNNButton.enabled = True
        self.ui.resultsCollapsibleButton.collapsed = False

    def showCurves(self, index=None) -> None:
        """Show the chosen curve chart in the panel's plot view."""
        nodes = self.logic.progressNodes()
        showLoss = self.ui.curveChartComboBox.currentIndex <= 0
        chart = nodes.loss_chart_node if showLoss else nodes.accuracy_chart_node
        if self._plotViewNode is None or not slicer.mrmlScene.IsNodePresent(self._plotViewNode):
            self._plotViewNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotViewNode",
                                                                    "TwoFiveCNNTraining plot")
            self._plotViewNode.SetSaveWithScene(False)
            self.ui.curvesPlotWidget.setMRMLPlotViewNode(self._plotViewNode)
        self._plotViewNode.SetPlotChartNodeID(chart.GetID())

    def onUseInTwoFiveCNNButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to select the model in TwoFiveCNN.")):
            self.logic.useModelInTwoFiveCNN(self.logic.lastModelPath)
            slicer.util.selectModule("TwoFiveCNN")


#
# TwoFiveCNNTrainingLogic
#


class TwoFiveCNNTrainingLogic(ScriptedLoadableModuleLogic):
    """MRML <-> TwoFiveCNNLib (scene.training_nodes, app.processes). Usable from the Python console::

        logic = slicer.util.getModuleLogic("TwoFiveCNNTraining")  # or TwoFiveCNNTrainingLogic()
        print(logic.datasetSummary("/data/MosMedData"))
        logic.startTraining("/data/MosMedData", "/models/mine.pt", stage1Epochs=14, stage2Epochs=150)
        events = logic.processEvents()  # call repeatedly (the widget does, from a timer)
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.process = None
        self.lastModelPath = None
        self.logCallback = None
        self._progressNodes = None

    def getParameterNode(self) -> TwoFiveCNNTrainingParameterNode:
        return TwoFiveCNNTrainingParameterNode(super().getParameterNode())

    def log(self, message: str) -> None:
        if self.logCallback:
            self.logCallback(message)

    # ------------------------------------------------------------------ dataset

    def datasetSummary(self, path: "str | os.PathLike | None") -> str:
        """Index the dataset at ``path`` with TwoFiveCNNLib and describe it (studies per class, warnings).

        ``path`` is a MosMed-style folder (``studies/CT-0..CT-4/...`` or ``CT-0..CT-4/...``) or a ``.csv``
        file with ``path,label`` columns.
        """
        if not path_is_set(path):
            raise ValueError(_("Choose a dataset folder, or a .csv file with path,label columns."))

        from TwoFiveCNNLib.data.summary import dataset_summary_text

        return dataset_summary_text(path)

    def updateLabelTable(self, volumeNodes: "Sequence | None" = None, labels: "Sequence | dict | None" = None,
                         tableNode: "vtkMRMLTableNode | None" = None) -> vtkMRMLTableNode:
        """List volumes (default: every scalar volume of the scene) in the label table; typed labels stay."""
        from TwoFiveCNNLib.scene.training_nodes import label_table_node

        if volumeNodes is None:
            volumeNodes = [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                           if not node.IsA("vtkMRMLLabelMapVolumeNode")]
        return label_table_node(slicer.mrmlScene, volumeNodes, labels, tableNode)

    def exportDataset(self, tableNode: "vtkMRMLTableNode | None",
                      exportDir: "str | os.PathLike") -> pathlib.Path:
        """Write the labelled volumes as NRRD files (once each) and a dataset CSV; returns the CSV path."""
        from TwoFiveCNNLib.scene.training_nodes import dataset_from_nodes

        if tableNode is None:
            raise ValueError(
                _("Choose the label table (press 'Add scene volumes to the label table' first)."))
        return dataset_from_nodes(tableNode, slicer.mrmlScene, exportDir, log=self.log)

    @staticmethod
    def exportFolder(modelPath: "str | os.PathLike") -> pathlib.Path:
        """Where scene volumes are exported for a model: ``<model folder>/<model name>_dataset``."""
        modelPath = pathlib.Path(modelPath)
        return modelPath.parent / f"{modelPath.stem}_dataset"

    def datasetForTraining(self, parameters: TwoFiveCNNTrainingParameterNode) -> pathlib.Path:
        """The dataset the parameters choose: the folder/CSV, or scene volumes exported beside the model."""
        if not parameters.useSceneVolumes:
            if not path_is_set(parameters.datasetPath):
                raise ValueError(_("Choose a dataset folder, or a .csv file with path,label columns."))
            return pathlib.Path(parameters.datasetPath)
        if not path_is_set(parameters.modelPath):
            raise ValueError(_("Choose the output model file first: scene volumes are exported beside it."))
        return self.exportDataset(parameters.labelTable, self.exportFolder(parameters.modelPath))

    def trainingProblem(self, parameters: TwoFiveCNNTrainingParameterNode) -> "str | None":
        """Why Train cannot be pressed yet, or None."""
        if not path_is_set(parameters.modelPath):
            return _("Choose the output model file (.pt).")
        if parameters.useSceneVolumes and parameters.labelTable is None:
            return _("Choose or create the label table of the scene volumes.")
        if not parameters.useSceneVolumes and not path_is_set(parameters.datasetPath):
            return _("Choose a dataset folder or .csv file.")
        return None

    # ------------------------------------------------------------------ training

    def checkTorch(self):
        """Make sure PyTorch is installed before a training process needs it; returns ``torch``.

        The training process runs Slicer's own Python, so it finds torch only where Slicer does. One
        install path for both modules: the TwoFiveCNN module's (its version floor, its question, no
        install while Slicer runs its tests), with the first-install notice in this panel's log.
        """
        panelLog = self.log if self.logCallback else None  # None: the TwoFiveCNN logic's log (Python console)
        return slicer.util.getModuleLogic("TwoFiveCNN").checkTorch(log=panelLog)

    @staticmethod
    def pythonExecutable() -> str:
        """PythonSlicer inside Slicer (the Slicer binary itself would start a second application)."""
        return python_executable()

    def progressNodes(self) -> "ProgressNodes":
        """The curve table and chart nodes of the current scene (recreated after a scene close)."""
        from TwoFiveCNNLib.scene.training_nodes import ProgressNodes

        nodes = self._progressNodes
        if nodes is None or not slicer.mrmlScene.IsNodePresent(nodes.curves_table_node):
            self._progressNodes = ProgressNodes(slicer.mrmlScene)
        return self._progressNodes

    def startTraining(self, data: "str | os.PathLike", modelPath: "str | os.PathLike | None",
                      stage1Epochs: "int | None" = None, stage2Epochs: "int | None" = None,
                      seed: "int | None" = None, device: "str | None" = None, extraArgs: "Sequence[str]" = (),
                      resume: bool = False) -> "TrainingProcess":
        """Start ``twofivecnn train`` in a child process; returns its TrainingProcess (see processEvents)."""
        from TwoFiveCNNLib.app.processes import TrainingProcess, train_arguments

        if self.isTraining():
            raise RuntimeError(_("Training is already running: cancel it first."))
        if not path_is_set(modelPath):
            raise ValueError(_("Choose the output model file (.pt)."))
        modelPath = pathlib.Path(modelPath)
        if modelPath.suffix.lower() != ".pt":
            modelPath = modelPath.with_name(modelPath.name + ".pt")
        args = [*train_arguments(stage1Epochs, stage2Epochs, seed, device_option(device) if device else None),
                *extraArgs]
        self.process = TrainingProcess(data, modelPath, args, python=self.pythonExecutable())
        self.lastModelPath = modelPath
        if not resume:
            self.progressNodes().clear()
        self.process.start(resume=resume)
        return self.process

    def isTraining(self) -> bool:
        return self.process is not None and self.process.is_running

    def processEvents(self) -> list[dict]:
        """New progress events of the training process, also appended to the curve nodes. Never blocks."""
        if self.process is None:
            return []
        events = self.process.poll()
        self.progressNodes().add_events(events)
        return events

    def cancelTraining(self, wait: bool = False) -> None:
        """Stop the training process tree; the checkpoint of the last completed epoch stays for Resume.

        ``wait`` False returns at once (the exit event follows through :meth:`processEvents`); True
        returns once no process of the run is left (console scripts, module cleanup).
        """
        if self.process is not None:
            self.process.cancel(wait=wait)

    def canResume(self, modelPath: "str | os.PathLike | None") -> bool:
        if not path_is_set(modelPath):
            return False
        modelPath = pathlib.Path(modelPath)
        return modelPath.with_name(modelPath.name + ".ckpt").is_file()

    def stderrTail(self) -> str:
        return self.process.stderr_tail if self.process is not None else ""

    # ------------------------------------------------------------------ results

    def showMetrics(self, modelPath: "str | os.PathLike") -> tuple[vtkMRMLTableNode, vtkMRMLTableNode]:
        """The model's test metrics as a per-class table node and a confusion matrix table node."""
        from TwoFiveCNNLib.scene.training_nodes import metrics_to_tables

        return metrics_to_tables(modelPath, slicer.mrmlScene)

    def useModelInTwoFiveCNN(self, modelPath: "str | os.PathLike | None") -> None:
        """Make ``modelPath`` the TwoFiveCNN module's model: in its parameter node and its setting."""
        if not path_is_set(modelPath) or not os.path.isfile(modelPath):
            raise ValueError(_("No trained model file yet: train a model first."))
        slicer.app.userSettings().setValue(LAST_MODEL_FILE_SETTING, str(modelPath))
        mainLogic = slicer.util.getModuleLogic("TwoFiveCNN")
        if mainLogic is not None:
            parameters = mainLogic.getParameterNode()
            parameters.modelPath = pathlib.Path(modelPath)
            if hasattr(parameters, "useDemoModel"):
                parameters.useDemoModel = False


#
# TwoFiveCNNTrainingTest
#


class TwoFiveCNNTrainingTest(ScriptedLoadableModuleTest):
    """Self-tests, run with "Reload and Test" or by CTest.

    The training test needs PyTorch and checks for it first (:meth:`_torchOrSkip`): where Slicer's build
    machines run the self-tests without PyTorch, it is skipped with a message rather than install it.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_datasetSummary_of_phantom_cohort, self.test_datasetSummary_rejects_unset_path,
                     self.test_train_from_volume_nodes):
            self.setUp()
            test()

    def _torchOrSkip(self) -> bool:
        """Whether a test that needs PyTorch may go on; its first call.

        While Slicer runs its tests (``--testing``) a missing PyTorch is not installed: the test says
        so and is skipped. Otherwise (Reload and Test) it is installed as Train does it, after asking.
        """
        if torch_importable():
            return True
        if slicer.app.testingEnabled():
            self.delayDisplay(TORCH_SKIP_MESSAGE)
            return False
        TwoFiveCNNTrainingLogic().checkTorch()
        return True

    def test_datasetSummary_of_phantom_cohort(self):
        self.delayDisplay("Summarizing a small synthetic phantom cohort")
        import tempfile

        from TwoFiveCNNLib.data.phantoms import write_cohort

        with tempfile.TemporaryDirectory(dir=slicer.app.temporaryPath) as folder:
            write_cohort(folder, [1, 1], seed=0)
            summary = TwoFiveCNNTrainingLogic().datasetSummary(pathlib.Path(folder))
        self.assertIn("2 studies", summary)
        self.assertIn("CT-0: 1", summary)
        self.assertIn("CT-1: 1", summary)
        self.delayDisplay("Test passed")

    def test_datasetSummary_rejects_unset_path(self):
        logic = TwoFiveCNNTrainingLogic()
        for unset in (None, "", pathlib.Path()):
            with self.assertRaises(ValueError):
                logic.datasetSummary(unset)

    def test_train_from_volume_nodes(self):
        """Phantom volume nodes -> label table -> dataset -> a tiny training process -> curves and metrics."""
        self.delayDisplay("Training a tiny model on phantom volume nodes (about half a minute)")
        if not self._torchOrSkip():
            return
        import tempfile
        import time

        from TwoFiveCNNLib.data.phantoms import generate_phantom

        logic = TwoFiveCNNTrainingLogic()
        nodes, labels = [], []
        for label in range(5):
            for n in range(3):  # three per class: one each for train, validation and test
                phantom = generate_phantom(label, seed=10 * label + n)
                nodes.append(slicer.util.addVolumeFromArray(phantom.array_kji, phantom.geometry.ijk_to_ras(),
                                                            name=f"phantom CT-{label} #{n}"))
                labels.append(f"CT-{label}")
        table = logic.updateLabelTable(nodes, labels)
        self.assertEqual(table.GetNumberOfRows(), 15)
        with tempfile.TemporaryDirectory(dir=slicer.app.temporaryPath) as folder:
            folder = pathlib.Path(folder)
            model = folder / "tiny.pt"
            data = logic.exportDataset(table, logic.exportFolder(model))
            self.assertIn("15 studies", logic.datasetSummary(data))
            tiny = ["--in-plane", "48", "--slices", "12", "--stage2-views", "2", "--quiet",
                    "--cache", str(folder / "cache")]
            logic.startTraining(data, model, stage1Epochs=1, stage2Epochs=4, seed=0, device="cpu",
                                extraArgs=tiny)
            events, deadline = [], time.monotonic() + 300
            while not any(e["stage"] == "exit" for e in events):
                self.assertLess(time.monotonic(), deadline, "training did not finish in 5 minutes")
                if hasattr(slicer.app, "processEvents"):
                    slicer.app.processEvents()
                events += logic.processEvents()
                time.sleep(0.1)
            self.assertEqual(events[-1]["returncode"], 0, logic.stderrTail())
            self.assertTrue(model.is_file())

            curves = logic.progressNodes()
            # One stage-1 epoch, and the last stage-2 report.
            self.assertEqual(curves.curves_table_node.GetNumberOfRows(), 2)
            self.assertEqual(curves.loss_chart_node.GetNumberOfPlotSeriesNodes(), 2)
            metricsNode, confusionNode = logic.showMetrics(model)
            self.assertEqual(metricsNode.GetNumberOfRows(), 5)
            self.assertEqual(confusionNode.GetNumberOfRows(), 5)
            self.assertEqual(confusionNode.GetNumberOfColumns(), 6)
        self.delayDisplay("Test passed")
