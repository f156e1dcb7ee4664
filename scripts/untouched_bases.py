"""Grade untouched real chest CTs, each stored as LPS, RAS and feet first, with a model (default: the
bundled demo model): a normal lung must come out CT-0 however it is stored.

    .venv/bin/python scripts/untouched_bases.py [--model M] CT... > benchmarks/real_anatomy/untouched_bases.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from TwoFiveCNNLib.inference.predict import load_model, predict_volume
from TwoFiveCNNLib.io.volume import read_volume, stored_flipped

FLIPS = {"LPS": (False, False, False), "RAS": (False, True, True), "feet first": (True, False, False)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model file (default: the bundled demo model)")
    parser.add_argument("ct", nargs="+", type=Path)
    args = parser.parse_args()
    model = load_model(args.model, "cpu")
    rows = []
    for path in args.ct:
        base = read_volume(path)
        for orientation, flips in FLIPS.items():
            prediction = predict_volume(model, stored_flipped(base, flips))
            rows.append({"ct": path.name, "orientation": orientation, "grade": prediction.label,
                         "probability": round(prediction.probabilities[prediction.label], 4),
                         "cnn_ct0": round(prediction.cnn_probabilities["CT-0"], 4),
                         "involved_share": round(prediction.involvement["involved_share"], 4),
                         "involvement_grade": prediction.involvement["grade"]})
            print(f"{path.name:32s} {orientation:10s} {prediction.label} ({rows[-1]['probability']:.2f}), "
                  f"CNN CT-0 {rows[-1]['cnn_ct0']:.2f}, involved {100 * rows[-1]['involved_share']:.1f} %",
                  file=sys.stderr)
    json.dump({"model": model.name, "studies": rows,
               "all_ct0": all(row["grade"] == "CT-0" for row in rows)}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
