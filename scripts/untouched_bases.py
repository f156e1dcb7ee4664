"""Grade untouched real chest CTs, each stored as LPS, RAS and feet first, with a model (default: the
bundled demo model): a normal lung must come out CT-0 however it is stored. Each CT is also graded as
users may bring it: with its field of view cropped in-plane so the body touches the edge, and, when
its slices are thicker than 1.5 mm, resampled to 1 mm slices (linear, as a viewer's resampling does).

    .venv/bin/python scripts/untouched_bases.py [--model M] CT... > benchmarks/real_anatomy/untouched_bases.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import SimpleITK as sitk
from TwoFiveCNNLib.inference.predict import load_model, predict_volume
from TwoFiveCNNLib.io.volume import Geometry, Volume, image_from_original, read_volume, stored_flipped

FLIPS = {"LPS": (False, False, False), "RAS": (False, True, True), "feet first": (True, False, False)}
CROP_KEEP = (0.70, 0.76)  # the central share of the columns and rows kept: the body is cut at both sides
THIN_MM = 1.0


def as_brought(volume: Volume) -> dict[str, Volume]:
    """The CT with its field of view cropped in-plane and, for thick slices, resampled to thin ones."""
    image = image_from_original(volume.to_original(volume.array), volume.geometry)
    size, spacing = image.GetSize(), image.GetSpacing()
    margins = [round(n * (1 - keep) / 2) for n, keep in zip(size[:2], CROP_KEEP)]
    images = {"field of view cropped": image[margins[0]:size[0] - margins[0], margins[1]:size[1] - margins[1], :]}
    if spacing[2] > 1.5 * THIN_MM:
        thin_size = [size[0], size[1], round((size[2] - 1) * spacing[2] / THIN_MM) + 1]
        images[f"{THIN_MM:g} mm slices"] = sitk.Resample(
            image, thin_size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (*spacing[:2], THIN_MM),
            image.GetDirection(), -1024.0, image.GetPixelID())
    return {name: Volume.from_original(sitk.GetArrayFromImage(variant), Geometry.from_sitk(variant), volume.source)
            for name, variant in images.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model file (default: the bundled demo model)")
    parser.add_argument("ct", nargs="+", type=Path)
    args = parser.parse_args()
    model = load_model(args.model, "cpu")
    rows = []
    for path in args.ct:
        base = read_volume(path)
        studies = {orientation: stored_flipped(base, flips) for orientation, flips in FLIPS.items()}
        studies.update(as_brought(base))
        for orientation, volume in studies.items():
            prediction = predict_volume(model, volume)
            rows.append({"ct": path.name, "orientation": orientation, "grade": prediction.label,
                         "probability": round(prediction.probabilities[prediction.label], 4),
                         "cnn_ct0": round(prediction.cnn_probabilities["CT-0"], 4),
                         "involved_share": round(prediction.involvement["involved_share"], 4),
                         "involvement_grade": prediction.involvement["grade"]})
            print(f"{path.name:32s} {orientation:21s} {prediction.label} ({rows[-1]['probability']:.2f}), "
                  f"CNN CT-0 {rows[-1]['cnn_ct0']:.2f}, involved {100 * rows[-1]['involved_share']:.1f} %",
                  file=sys.stderr)
    json.dump({"model": model.name, "studies": rows,
               "all_ct0": all(row["grade"] == "CT-0" for row in rows)}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
