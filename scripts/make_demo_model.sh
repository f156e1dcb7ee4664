#!/usr/bin/env bash
# Rebuild the bundled demo model (TwoFiveCNN/TwoFiveCNNLib/inference/demo_model.pt) from synthetic phantoms only.
# Seeded end to end: the same command gives the same model on the same software versions.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-build/demo_model}"
.venv/bin/twofivecnn phantoms "$work/phantoms" --counts 20,40,16,10,6 --seed 101
.venv/bin/twofivecnn train --data "$work/phantoms" --out TwoFiveCNN/TwoFiveCNNLib/inference/demo_model.pt \
  --cache "$work/cache" --split "$work/split.json" --seed 0 --demo --name "TwoFiveCNN synthetic-phantom demo model"
