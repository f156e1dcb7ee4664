"""The lung and involvement figures the README quotes, measured on the slicerio chest CT (against its
expert lung segments) and on phantoms of every grade at 1 mm and 5 mm slices. The dorsal
consolidation rows are measured twice: by the HU lung mask alone, and as ``predict`` measures them
with the bundled demo model, whose lesion network adds its lesion voxels to the lungs. The edge
lesion rows insert consolidation balls at the lung's edge (those of ``Testing/test_lungs.py``) into
slicerio's CT and into any real chest CTs named on the command line:

    .venv/bin/python scripts/real_bases.py /tmp/bases
    .venv/bin/python scripts/lung_figures.py /tmp/bases/*.nrrd > benchmarks/lung_figures.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import slicerio
from TwoFiveCNNLib.data.phantoms import generate_phantom
from TwoFiveCNNLib.inference.predict import load_model, predict_volume
from TwoFiveCNNLib.io.volume import Volume, read_volume
from TwoFiveCNNLib.transforms.involvement import lung_involvement
from TwoFiveCNNLib.transforms.lungs import LEFT_LUNG, RIGHT_LUNG, LungSettings, segment_lungs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from test_lungs import dorsal_band, edge_lesions  # the tests' lesions: one implementation

PHANTOM_SEEDS = {"1 mm slices": 5, "5 mm slices": 57, "drawn spacing": 1}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return round(2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum())), 4)


def slicerio_chest() -> tuple[Volume, np.ndarray, np.ndarray]:
    """slicerio's chest CT and its expert right and left lungs on the CT's canonical grid."""
    data = Path(slicerio.__file__).parent / "data"
    chest = read_volume(data / "CTChest4.nrrd")
    segmentation = slicerio.read_segmentation(str(data / "Segmentation.seg.nrrd"))
    values = {s["name"]: s["labelValue"] for s in segmentation["segments"]}
    reference = Volume.from_original(np.transpose(segmentation["voxels"], (2, 1, 0)), chest.geometry).array
    return chest, reference == values["right lung"], reference == values["left lung"]


def chest_figures() -> dict:
    chest, right, left = slicerio_chest()
    labels = segment_lungs(chest.array, chest.spacing_zyx)
    report, _ = lung_involvement(chest.array, chest.spacing_zyx)
    return {"study": "slicerio CTChest4 (3.05 x 3.05 x 10 mm)",
            "dice_right": dice(labels == RIGHT_LUNG, right),
            "dice_left": dice(labels == LEFT_LUNG, left),
            "lung_volume_ml": report["lungs"]["volume_ml"],
            "involved_percent": round(100 * report["involved_share"], 2), "grade": report["grade"],
            "bands_percent": {k: round(100 * v, 2) for k, v in report["lungs"]["bands_share"].items()}}


def dorsal_consolidation_figures() -> list[dict]:
    """A known limit of the HU mask, measured: the back of slicerio's right lung made solid (+30 HU) to
    a depth of 15, 25 and 40 mm over its whole height, as dependent consolidation lies. Closing cannot
    bring back tissue the lung no longer surrounds, so how much of it the mask keeps is what this
    reports, for the HU mask and for the demo model's prediction (lesion network voxels added)."""
    model = load_model(None, "cpu")
    chest, right, left = slicerio_chest()
    lungs = right | left
    rows = []
    for depth_mm in (15, 25, 40):
        band = dorsal_band(right, chest.spacing_zyx, depth_mm)
        hu = chest.array.astype(np.int16)
        hu[band] = 30
        labels = segment_lungs(hu, chest.spacing_zyx)
        report, _ = lung_involvement(hu, chest.spacing_zyx)
        prediction = predict_volume(model, Volume.from_original(chest.to_original(hu), chest.geometry))
        predicted_lungs = Volume.from_original(np.asarray(prediction.bands_kji), chest.geometry).array > 0
        rows.append({"depth_mm": depth_mm, "band_inside_mask": round(float((labels[band] == RIGHT_LUNG).mean()), 3),
                     "true_involved_percent": round(100 * band.sum() / lungs.sum(), 1),
                     "measured_involved_percent": round(100 * report["involved_share"], 1),
                     "demo_model_band_inside_lungs": round(float(predicted_lungs[band].mean()), 3),
                     "demo_model_involved_percent": round(100 * prediction.involvement["involved_share"], 1)})
    return rows


def edge_lesion_figures(bases: list[str]) -> list[dict]:
    """Eighteen +30 HU balls (12 and 20 mm radius) on the right lung's back, side and front at three
    heights: per study, the share of each inside the right lung with the lesions' rims grown (the
    default), with closing alone (``rim_mm=0``) and with rims grown from seeds that do not spread
    along z (``rim_seed_spread_mm=0``), and what each gives on the untouched study.
    On slicerio's CT the balls are cut from its expert right lung; on other CTs, from the aerated
    voxels (below -400 HU) of the study's own lung mask."""
    chest, expert_right, _ = slicerio_chest()
    rows = []
    for path in [None, *map(Path, bases)]:
        if path is None:
            volume, reference, study = chest, np.where(expert_right, RIGHT_LUNG, 0), "CTChest4.nrrd"
        else:
            volume, study = read_volume(path), path.name
            reference = np.where(volume.array < -400, segment_lungs(volume.array, volume.spacing_zyx), 0)
        row = {"study": study, "spacing_mm": [round(s, 2) for s in volume.spacing_zyx]}
        untouched = {}
        for name, settings in (("rims_grown", LungSettings()), ("closing_only", LungSettings(rim_mm=0)),
                               ("seeds_not_spread", LungSettings(rim_seed_spread_mm=0))):
            inside = [float((segment_lungs(hu, volume.spacing_zyx, settings)[lesion] == RIGHT_LUNG).mean())
                      for hu, lesion in edge_lesions(volume, reference)]
            row[name] = {"mean_inside": round(float(np.mean(inside)), 3), "min_inside": round(min(inside), 3),
                         "inside": [round(v, 2) for v in inside]}
            report, _ = lung_involvement(volume.array, volume.spacing_zyx, lung_settings=settings)
            untouched[name] = {"lung_volume_ml": report["lungs"]["volume_ml"],
                               "involved_percent": round(100 * report["involved_share"], 2)}
        row["untouched"] = untouched
        rows.append(row)
    return rows


def phantom_figures() -> list[dict]:
    rows = []
    for name, seed in PHANTOM_SEEDS.items():
        for label in range(5):
            phantom = generate_phantom(label, seed)
            volume = Volume.from_original(phantom.array_kji, phantom.geometry)
            report, bands = lung_involvement(volume.array, volume.spacing_zyx)
            truth = phantom.lung_mask_zyx | phantom.lesion_mask_zyx
            rows.append({"phantom": name, "seed": seed, "slice_mm": volume.spacing_zyx[0], "label": f"CT-{label}",
                         "lung_dice": dice(bands > 0, truth),
                         "true_involved_percent": round(100 * phantom.info["involved_fraction"], 1),
                         "measured_involved_percent": round(100 * report["involved_share"], 1),
                         "grade_by_involvement": report["grade"]})
    return rows


if __name__ == "__main__":
    phantoms = phantom_figures()
    exact = sum(row["grade_by_involvement"] == row["label"] for row in phantoms)
    print(json.dumps({"chest": chest_figures(), "dorsal_consolidation": dorsal_consolidation_figures(),
                      "edge_lesions": edge_lesion_figures(sys.argv[1:]), "phantoms": phantoms,
                      "phantom_grades_exact": f"{exact}/{len(phantoms)}"}, indent=1))
