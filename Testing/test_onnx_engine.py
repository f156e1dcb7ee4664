"""predict on ONNX Runtime: the same outputs as on torch, a process that never imports torch, the shipped
export of the demo model current, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from TwoFiveCNNLib.app.cli import main
from TwoFiveCNNLib.data.phantoms import generate_phantom
from TwoFiveCNNLib.inference.engines import BUNDLED_MODEL, load_model, onnx_export_for
from TwoFiveCNNLib.inference.onnx_export import export_onnx
from TwoFiveCNNLib.inference.onnx_model import export_folder_of
from TwoFiveCNNLib.inference.predict import predict_volume
from TwoFiveCNNLib.io.volume import Volume, read_volume

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

LESION_MAP_STEP = 1 / 255  # the lesion map volume is stored in uint8 steps


def assert_same_prediction(torch_prediction, onnx_prediction) -> None:
    names = list(torch_prediction.probabilities)
    assert onnx_prediction.label == torch_prediction.label
    for attribute in ("probabilities", "cnn_probabilities"):
        expected = np.array([getattr(torch_prediction, attribute)[n] for n in names])
        got = np.array([getattr(onnx_prediction, attribute)[n] for n in names])
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(onnx_prediction.slice_attention, torch_prediction.slice_attention, atol=1e-4, rtol=0)
    lesion_map_gap = np.abs(onnx_prediction.lesion_map_kji.astype(np.float32)
                            - torch_prediction.lesion_map_kji.astype(np.float32))
    assert lesion_map_gap.max() <= LESION_MAP_STEP
    assert onnx_prediction.involvement == torch_prediction.involvement
    assert onnx_prediction.is_demo_model == torch_prediction.is_demo_model


def test_the_shipped_export_is_made_from_the_shipped_model_and_current(tmp_path):
    """The export beside the demo model records the model file's digest, and exporting that file again
    gives the same bytes: the shipped export is what this code makes of this model."""
    shipped = onnx_export_for(None)
    assert shipped == export_folder_of(BUNDLED_MODEL)
    again = export_onnx(BUNDLED_MODEL, tmp_path / "again")
    for name in ("embed.onnx", "head.onnx", "lesions.onnx", "model.json"):
        assert (again / name).read_bytes() == (shipped / name).read_bytes(), name


def test_demo_model_on_onnx_runtime_predicts_what_torch_predicts(demo_model, chest):
    torch_model, onnx_model = demo_model, load_model(None, "cpu", "onnx")
    assert (torch_model.engine, onnx_model.engine) == ("torch", "onnxruntime")
    assert load_model(None, "cpu", "auto").engine == "onnxruntime"
    phantom = generate_phantom(3, seed=3, orientation="RAS")
    for volume in (chest, Volume.from_original(phantom.array_kji, phantom.geometry)):
        assert_same_prediction(predict_volume(torch_model, volume), predict_volume(onnx_model, volume))


def test_a_trained_model_exported_by_the_command_line_predicts_the_same(tiny_model, chest_ct_path, tmp_path):
    """A user's own model: export-onnx puts the export beside the file, where predict finds it."""
    model_path = tmp_path / "mine.pt"
    model_path.write_bytes(tiny_model.read_bytes())
    assert load_model(model_path, "cpu", "auto").engine == "torch"  # no export yet: torch
    assert main(["export-onnx", "--model", str(model_path)]) == 0
    assert (tmp_path / "mine.onnx" / "model.json").is_file()
    volume = read_volume(chest_ct_path)
    assert_same_prediction(predict_volume(load_model(model_path, "cpu", "torch"), volume),
                           predict_volume(load_model(model_path, "cpu", "auto"), volume))
    # A retrained file no longer matches its old export: auto goes back to torch, onnx says what to do.
    model_path.write_bytes(model_path.read_bytes() + b"\0")
    with pytest.warns(UserWarning, match="made from another version"):
        assert load_model(model_path, "cpu", "auto").engine == "torch"


def test_predict_on_onnx_runtime_never_imports_torch(chest_ct_path, tmp_path):
    """A whole predict (the demo model, its outputs and summary) in a fresh process, torch never loaded."""
    code = ("import sys, json; from TwoFiveCNNLib.app.cli import main; "
            f"code = main(['predict', {str(chest_ct_path)!r}, '--out', {str(tmp_path / 'out')!r}]); "
            "print(json.dumps([code, sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    code, torch_modules = json.loads(run.stdout.strip().splitlines()[-1])
    assert code == 0 and torch_modules == []
    record = json.loads((tmp_path / "out" / "CTChest4.json").read_text())  # not the outputs manifest
    assert record["label"] in record["probabilities"] and record["notice"]


def test_engine_errors_name_the_file_and_the_fix(tiny_model, chest_ct_path, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(chest_ct_path), "--out", str(out), "--model", str(tiny_model), "--engine", "onnx"]) == 2
    message = capsys.readouterr().err
    assert str(tiny_model) in message and "twofivecnn export-onnx --model" in message
    assert main(["predict", str(chest_ct_path), "--out", str(out), "--engine", "onnx", "--half"]) == 2
    assert "--engine torch" in capsys.readouterr().err
    shipped = str(onnx_export_for(None))
    assert main(["predict", str(chest_ct_path), "--out", str(out), "--model", shipped, "--engine", "torch"]) == 2
    assert "an ONNX export" in capsys.readouterr().err
    broken = tmp_path / "broken.onnx"
    broken.mkdir()
    (broken / "model.json").write_text(json.dumps({"format": "twofivecnn-onnx", "version": 99}))
    assert main(["predict", str(chest_ct_path), "--out", str(out), "--model", str(broken), "--engine", "onnx"]) == 2
    assert "version 99" in capsys.readouterr().err
    assert not out.exists() or not any(out.glob("*.json"))
