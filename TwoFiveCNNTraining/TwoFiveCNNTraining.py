"""TwoFiveCNN Training: index a labelled chest CT dataset and (soon) train a TwoFiveCNN model on it.

A thin Slicer front end over TwoFiveCNNLib, which the TwoFiveCNN module installs into the same
scripted-modules folder. Training will run in a separate PythonSlicer process that the widget
polls, so the GUI never freezes; until then the Train and Cancel buttons stay disabled.
"""

import pathlib

import slicer
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

HOMEPAGE = "https://github.com/twofivecnn/SlicerTwoFiveCNN"


#
# TwoFiveCNNTraining
#


class TwoFiveCNNTraining(ScriptedLoadableModule):
    """Module metadata, shown in Slicer's module panel and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TwoFiveCNN Training")
        self.parent.categories = [_("Chest Imaging")]
        self.parent.dependencies = []
        self.parent.contributors = ["TwoFiveCNN developers"]
        self.parent.helpText = _("""
Prepares and (in a coming version) runs the training of a TwoFiveCNN model, the two-stage 2.5D network
that grades COVID-19 pneumonia severity on chest CT with the MosMed classes CT-0 to CT-4.
<p>Choose a dataset folder of chest CT studies with their severity labels (for example MosMedData) and
press "Summarize dataset" to see how many studies each class holds. Training from within Slicer is not
implemented yet: the Train and Cancel buttons are disabled until it is.</p>
<p>The demo model bundled with the TwoFiveCNN module was trained on synthetic phantoms only; it is not a
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

    datasetPath: folder of labelled chest CT studies.
    """

    datasetPath: pathlib.Path


#
# TwoFiveCNNTrainingWidget
#


class TwoFiveCNNTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI only: binds the .ui to the parameter node and hands the work to TwoFiveCNNTrainingLogic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        # Must stay cheap and silent: the generic tests instantiate the widget. No torch, no dialogs.
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TwoFiveCNNTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = TwoFiveCNNTrainingLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.summarizeButton.connect("clicked(bool)", self.onSummarizeButton)
        # Train and Cancel stay disabled (see their tooltips in the .ui) until training is implemented.
        self.ui.trainButton.enabled = False
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.value = 0

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

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Binds every widget with a SlicerParameterName property in the .ui to its parameter.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def log(self, message: str) -> None:
        """Append a line to the log box (the logic and, later, the training process report here)."""
        self.ui.logTextEdit.appendPlainText(message)

    def onSummarizeButton(self) -> None:
        self.ui.summaryTextEdit.setPlainText("")
        with slicer.util.tryWithErrorDisplay(_("Failed to summarize the dataset."), waitCursor=True):
            path = self._parameterNode.datasetPath
            summary = self.logic.datasetSummary(path)
            self.ui.summaryTextEdit.setPlainText(summary)
            self.log(_("Summarized dataset {path}").format(path=path))


#
# TwoFiveCNNTrainingLogic
#


class TwoFiveCNNTrainingLogic(ScriptedLoadableModuleLogic):
    """Dataset and training operations. Usable from the Python console without the widget::

        logic = slicer.util.getModuleLogic("TwoFiveCNNTraining")  # or TwoFiveCNNTrainingLogic()
        print(logic.datasetSummary("/data/MosMedData"))
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return TwoFiveCNNTrainingParameterNode(super().getParameterNode())

    def datasetSummary(self, path) -> str:
        """Index the dataset at ``path`` with TwoFiveCNNLib and describe it (studies per class, warnings).

        ``path`` is a MosMed-style folder (``studies/CT-0..CT-4/...`` or ``CT-0..CT-4/...``) or a ``.csv``
        file with ``path,label`` columns.
        """
        # An unset pathlib.Path parameter reads as "."; never index the working directory by accident.
        if path is None or str(path) in ("", "."):
            raise ValueError(_("Choose a dataset folder, or a .csv file with path,label columns."))

        from TwoFiveCNNLib.dataset import DatasetIndex

        return DatasetIndex.load(path).summary()


#
# TwoFiveCNNTrainingTest
#


class TwoFiveCNNTrainingTest(ScriptedLoadableModuleTest):
    """Self-tests, run with "Reload and Test" or by CTest."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_datasetSummary_of_phantom_cohort, self.test_datasetSummary_rejects_unset_path):
            self.setUp()
            test()

    def test_datasetSummary_of_phantom_cohort(self):
        self.delayDisplay("Summarizing a small synthetic phantom cohort")
        import tempfile

        from TwoFiveCNNLib.phantoms import write_cohort

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
