"""The bundled demo model on the one real chest CT shipped to us (slicerio's CTChest4), untouched: it must
grade it CT-0 however the CT is stored, and say what it was trained on."""

from __future__ import annotations

import pytest
from TwoFiveCNNLib.inference.predict import load_model, predict_volume
from TwoFiveCNNLib.io.volume import read_volume, stored_flipped

FLIPS = {"LPS": (False, False, False), "RAS": (False, True, True), "feet first": (True, False, False)}


@pytest.fixture(scope="module")
def demo_model():
    return load_model(None, "cpu")


@pytest.mark.parametrize("orientation", list(FLIPS))
def test_the_untouched_real_ct_grades_ct0_in_every_orientation(demo_model, chest_ct_path, orientation):
    volume = stored_flipped(read_volume(chest_ct_path), FLIPS[orientation])
    prediction = predict_volume(demo_model, volume)
    assert prediction.label == "CT-0", prediction.probabilities
    assert prediction.cnn_probabilities["CT-0"] > 0.5
    assert prediction.involvement["grade"] == "CT-0"


def test_the_demo_model_says_what_it_was_trained_on(demo_model):
    meta = demo_model.metadata
    assert meta["demo"] is True and "CTChest4" in demo_model.name and "LIDC-IDRI-0001" in demo_model.name
    for subset in ("train", "val"):  # lesions inserted into two real CTs (synth --prefix rs, li), beside phantoms
        for prefix in ("rs_", "li_"):
            assert any(sid.startswith(prefix) for sid in meta["split"][subset])
        assert any(not sid.startswith(("rs_", "li_")) for sid in meta["split"][subset])
    assert meta["fusion"]["chosen_on"] == "validation split"
    assert demo_model.lesion_net is not None, "trained on the inserted lesions' masks"
