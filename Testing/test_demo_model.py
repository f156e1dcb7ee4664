"""The bundled demo model on the one real chest CT shipped to us (slicerio's CTChest4), untouched: it must
grade it CT-0 however the CT is stored, and say what it was trained on."""

from __future__ import annotations

import numpy as np
import pytest
from TwoFiveCNNLib.inference.predict import BUNDLED_MODEL, predict_volume
from TwoFiveCNNLib.io.model_file import read_archive_without_torch
from TwoFiveCNNLib.io.volume import Volume, stored_flipped

FLIPS = {"LPS": (False, False, False), "RAS": (False, True, True), "feet first": (True, False, False)}


@pytest.mark.parametrize("orientation", list(FLIPS))
def test_the_untouched_real_ct_grades_ct0_in_every_orientation(demo_model, chest, orientation):
    volume = stored_flipped(chest, FLIPS[orientation])
    prediction = predict_volume(demo_model, volume)
    assert prediction.label == "CT-0", prediction.probabilities
    assert prediction.cnn_probabilities["CT-0"] > 0.5
    assert prediction.involvement["grade"] == "CT-0"


def test_the_demo_model_says_what_it_was_trained_on(demo_model):
    tensors, meta = read_archive_without_torch(BUNDLED_MODEL)  # the file's own record
    assert meta["demo"] is True and demo_model.is_demo and "CTChest4" in demo_model.name and "LIDC-IDRI-0001" in demo_model.name
    for subset in ("train", "val"):  # lesions inserted into two real CTs (synth --prefix rs, li), beside phantoms
        for prefix in ("rs_", "li_"):
            assert any(sid.startswith(prefix) for sid in meta["split"][subset])
        assert any(not sid.startswith(("rs_", "li_")) for sid in meta["split"][subset])
    assert meta["fusion"]["chosen_on"] == "validation split"
    assert "lesion_net" in tensors and demo_model.lesion_lungs, "trained on the inserted lesions' masks"


def dorsal_band(lung: np.ndarray, spacing_zyx: tuple[float, float, float], depth_mm: float) -> np.ndarray:
    """The back of ``lung`` (a mask) to ``depth_mm`` from its hindmost voxel in each column of each
    slice, over its whole height: where dependent consolidation lies."""
    back = np.where(lung.any(axis=1), lung.shape[1] - 1 - np.argmax(lung[:, ::-1, :], axis=1), -1)  # [z, x]
    rows = np.arange(lung.shape[1])[None, :, None]
    return lung & (rows > back[:, None, :] - depth_mm / spacing_zyx[1])


def test_dependent_consolidation_joins_the_lungs_through_the_lesion_network(demo_model, chest):
    """The back of CTChest4's right lung made solid (+30 HU) to a depth of 40 mm over its whole height:
    the HU lung mask keeps almost none of it (it looks like the chest wall); the demo model's lesion
    network, taught on consolidation painted against the chest wall, brings most of it back into the
    lungs and into the involved share."""
    from TwoFiveCNNLib.transforms.involvement import lung_involvement
    from TwoFiveCNNLib.transforms.lungs import RIGHT_LUNG, segment_lungs

    band = dorsal_band(segment_lungs(chest.array, chest.spacing_zyx) == RIGHT_LUNG, chest.spacing_zyx, 40)
    hu = chest.array.astype(np.int16)
    hu[band] = 30
    hu_report, hu_bands = lung_involvement(hu, chest.spacing_zyx)
    assert (hu_bands[band] > 0).mean() < 0.1
    prediction = predict_volume(demo_model, Volume.from_original(chest.to_original(hu), chest.geometry))
    lungs = Volume.from_original(np.asarray(prediction.bands_kji), chest.geometry).array > 0
    assert lungs[band].mean() > 0.4
    assert prediction.involvement["learned_added_ml"] > 0
    assert prediction.involvement["involved_share"] > hu_report["involved_share"] + 0.05

