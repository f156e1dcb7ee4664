"""Is this checkout's grading the same as a reference revision's? The check that lets a refactor of the
inference code (issue 26: one grading contract, new names) claim "behaviour unchanged":

    .venv/bin/python scripts/behaviour_check.py --reference aa700a2 [--json benchmarks/behaviour_check.json]

Both revisions grade the same inputs with their own bundled demo model (``inference/demo_model.pt``) and
its own ONNX export, on both engines (torch, ONNX Runtime): slicerio's real chest CT and two phantoms
(CT-0 and CT-3) written by this checkout's ``twofivecnn phantoms``. The reference's ``TwoFiveCNN/`` is
extracted with ``git archive`` into a temporary folder (no worktree left behind); each side runs in its
own process with only its own tree on ``PYTHONPATH`` and dumps what ``predict_volume`` gives. The dumps
must agree: probabilities, CNN probabilities and slice attention within 1e-6, the involvement report
equal, the lesion map's voxels identical (dtype, shape, values), the same label. Exit status 0 when they
do, 1 when anything differs (named), 2 when the check could not run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHECKOUT = Path(__file__).resolve().parents[1]
ENGINES = ("torch", "onnx")
ARRAY_BOUNDS = {"probabilities": 1e-6, "cnn_probabilities": 1e-6, "slice_attention": 1e-6}
PHANTOM_COUNTS, PHANTOM_SEED = "1,0,0,1", 26  # study_0001 is CT-0, study_0002 CT-3 (lesions)


class CheckError(Exception):
    """The check could not run (a revision, an input or a side's process failed); not a difference."""


def dump(out: Path, inputs: dict[str, Path]) -> None:
    """Grade ``inputs`` on both engines with the TwoFiveCNNLib on ``PYTHONPATH``; write one ``.npz`` per
    run and ``dump.json``. Runs under both revisions, so it reads each one's names: ``load_model`` from
    ``inference.engines`` where it exists, the lesion map as ``lesion_map_kji`` or (before) ``evidence_kji``."""
    import TwoFiveCNNLib

    if importlib.util.find_spec("TwoFiveCNNLib.inference.engines") is not None:
        from TwoFiveCNNLib.inference.engines import load_model
    else:
        from TwoFiveCNNLib.inference.predict import load_model
    from TwoFiveCNNLib.inference.predict import predict_volume
    from TwoFiveCNNLib.io.volume import read_volume

    runs = {}
    for engine in ENGINES:
        model = load_model(None, "cpu", engine)
        for name, path in inputs.items():
            prediction = predict_volume(model, read_volume(path))
            lesion_map = getattr(prediction, "lesion_map_kji", None)
            np.savez(out / f"{name}.{engine}.npz",
                     probabilities=np.array(list(prediction.probabilities.values())),
                     cnn_probabilities=np.array(list(prediction.cnn_probabilities.values())),
                     slice_attention=np.asarray(prediction.slice_attention),
                     lesion_map=np.asarray(prediction.evidence_kji if lesion_map is None else lesion_map))
            runs[f"{name}.{engine}"] = {"label": prediction.label, "class_names": list(prediction.probabilities),
                                        "involvement": prediction.involvement}
    library = str(Path(TwoFiveCNNLib.__file__).resolve().parent)
    (out / "dump.json").write_text(json.dumps({"library": library, "runs": runs}), encoding="utf-8")


def git(*arguments: str) -> str:
    result = subprocess.run(["git", *arguments], cwd=CHECKOUT, capture_output=True, text=True, check=False)
    if result.returncode:
        raise CheckError(f"git {' '.join(arguments)}: {result.stderr.strip()}")
    return result.stdout.strip()


def extract_tree(commit: str, into: Path) -> Path:
    """The revision's ``TwoFiveCNN/`` folder, as ``git archive commit TwoFiveCNN | tar -x -C into``."""
    into.mkdir()
    archive = subprocess.Popen(["git", "archive", commit, "TwoFiveCNN"], cwd=CHECKOUT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, capture_output=True, check=False)
    archive.stdout.close()
    archive_error = archive.stderr.read().decode(errors="replace")
    if archive.wait() or untar.returncode:
        raise CheckError(f"extracting {commit}'s TwoFiveCNN/ failed: {archive_error}{untar.stderr.decode()}".strip())
    return into / "TwoFiveCNN"


def run_python(tree: Path, arguments: list[str], what: str) -> None:
    """Run this Python on ``arguments`` with ``tree`` alone on PYTHONPATH; its failure names ``what``."""
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run([sys.executable, *arguments], env=environment, capture_output=True, text=True,
                            check=False)
    if result.returncode:
        raise CheckError(f"{what} failed (exit status {result.returncode}):\n{result.stderr.strip()[-3000:]}")


def make_inputs(folder: Path) -> dict[str, Path]:
    """slicerio's chest CT and two phantoms, written by this checkout's ``twofivecnn phantoms``."""
    from TwoFiveCNNLib.evaluation.bench import chest_ct_path

    chest = chest_ct_path()
    if chest is None:
        raise CheckError("slicerio's CTChest4.nrrd was not found; install slicerio (pip install slicerio).")
    run_python(CHECKOUT / "TwoFiveCNN", ["-m", "TwoFiveCNNLib", "phantoms", str(folder), "--counts", PHANTOM_COUNTS,
                                         "--seed", str(PHANTOM_SEED)], "twofivecnn phantoms")
    phantoms = sorted(folder.glob("studies/CT-*/study_*.nii.gz"))
    return {"CTChest4": chest, **{f"phantom_{p.parent.name}": p for p in phantoms}}


def run_dump(tree: Path, out: Path, inputs: dict[str, Path], side: str) -> dict:
    """Dump ``inputs`` graded by the code of ``tree`` (checked to be the code that ran)."""
    out.mkdir()
    run_python(tree, [str(Path(__file__).resolve()), "--dump", str(out),
                      *(f"{name}={path}" for name, path in inputs.items())], f"the {side} side's dump")
    record = json.loads((out / "dump.json").read_text(encoding="utf-8"))
    if Path(record["library"]) != (tree / "TwoFiveCNNLib").resolve():
        raise CheckError(f"the {side} side ran {record['library']}, not {tree / 'TwoFiveCNNLib'}; an installed "
                         f"TwoFiveCNNLib came before PYTHONPATH.")
    return record["runs"]


def max_abs_difference(reference: np.ndarray, current: np.ndarray) -> float:
    """The largest difference between two arrays; infinite when their shapes differ."""
    if reference.shape != current.shape:
        return float("inf")
    if reference.size == 0:
        return 0.0
    return float(np.max(np.abs(reference.astype(np.float64) - current.astype(np.float64))))


def flattened(value: object, prefix: str = "") -> dict[str, str]:
    """Each leaf of a JSON value by its dotted key, as exact JSON text (NaN equals NaN here)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flattened(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flattened(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): json.dumps(value)}


def compare_run(reference: tuple[dict, Path], current: tuple[dict, Path]) -> dict:
    """The measured differences of one input and engine, and the list of what breaks a bound."""
    (reference_record, reference_file), (current_record, current_file) = reference, current
    with np.load(reference_file) as reference_arrays, np.load(current_file) as current_arrays:
        differences = {name: max_abs_difference(reference_arrays[name], current_arrays[name])
                       for name in ARRAY_BOUNDS}
        reference_map, current_map = reference_arrays["lesion_map"], current_arrays["lesion_map"]
    problems = [f"{name} differ by {value:.3g} (bound {ARRAY_BOUNDS[name]:g})"
                for name, value in differences.items() if not value <= ARRAY_BOUNDS[name]]
    for field in ("class_names", "label"):
        if reference_record[field] != current_record[field]:
            problems.append(f"{field}: {reference_record[field]} against {current_record[field]}")
    reference_report, current_report = flattened(reference_record["involvement"]), flattened(
        current_record["involvement"])
    report_keys = sorted(k for k in reference_report.keys() | current_report.keys()
                         if reference_report.get(k) != current_report.get(k))
    if report_keys:
        problems.append(f"involvement report differs at {', '.join(report_keys)}")
    lesion_map = {"dtype": [str(reference_map.dtype), str(current_map.dtype)],
                  "nonzero_voxels": [int(np.count_nonzero(reference_map)), int(np.count_nonzero(current_map))],
                  "shape": [list(reference_map.shape), list(current_map.shape)],
                  "identical": reference_map.dtype == current_map.dtype
                  and bool(np.array_equal(reference_map, current_map))}
    if not lesion_map["identical"]:
        difference = max_abs_difference(reference_map, current_map)
        lesion_map["max_abs_difference"] = difference
        problems.append(f"lesion map differs (dtype {' / '.join(lesion_map['dtype'])}, shape "
                        f"{' / '.join(map(str, lesion_map['shape']))}, max |difference| {difference:.3g})")
    return {"max_abs_difference": differences, "label": [reference_record["label"], current_record["label"]],
            "involvement_keys_differing": report_keys, "lesion_map": lesion_map, "problems": problems}


def print_table(results: dict[str, dict]) -> None:
    columns = ("run", *ARRAY_BOUNDS, "involvement", "lesion map", "label")
    rows = [[run, *(f"{r['max_abs_difference'][n]:.2e}" for n in ARRAY_BOUNDS),
             "equal" if not r["involvement_keys_differing"] else f"differs at {len(r['involvement_keys_differing'])}",
             "identical" if r["lesion_map"]["identical"] else "DIFFERS", " / ".join(dict.fromkeys(r["label"]))]
            for run, r in results.items()]
    widths = [max(len(str(cell)) for cell in column) for column in zip(columns, *rows)]
    for row in (columns, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def check(reference: str, json_path: Path | None) -> int:
    """Extract, dump both sides, compare, report; 0 when everything is within its bound, 1 otherwise."""
    from TwoFiveCNNLib.io.atomic import write_json_atomic
    from TwoFiveCNNLib.io.manifest import OutputManifest

    start = time.perf_counter()
    try:
        reference_commit = git("rev-parse", "--verify", "--quiet", f"{reference}^{{commit}}")
    except CheckError:
        raise CheckError(f"--reference {reference}: not a commit of {CHECKOUT}; give a commit, tag or branch "
                         f"(git log --oneline lists them).") from None
    if json_path is not None:  # before the minutes of grading: a user's file of that name is not replaced
        OutputManifest.open(json_path.parent, "behaviour-check").claim(json_path)
    with tempfile.TemporaryDirectory(prefix="behaviour_check.") as temporary:
        folder = Path(temporary)
        inputs = make_inputs(folder / "inputs")
        trees = {"reference": extract_tree(reference_commit, folder / "reference"), "current": CHECKOUT / "TwoFiveCNN"}
        dumps = {side: run_dump(tree, folder / f"{side}_dump", inputs, side) for side, tree in trees.items()}
        results = {run: compare_run((dumps["reference"][run], folder / "reference_dump" / f"{run}.npz"),
                                    (dumps["current"][run], folder / "current_dump" / f"{run}.npz"))
                   for run in dumps["reference"]}
    seconds = time.perf_counter() - start
    head, changed = git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--", "TwoFiveCNN"))
    print(f"reference {reference} ({reference_commit[:12]}) against this checkout ({head[:12]}"
          f"{', with uncommitted changes' if changed else ''}); {seconds:.0f} s")
    print_table(results)
    problems = [f"{run}: {problem}" for run, result in results.items() for problem in result["problems"]]
    print("\n".join(problems) if problems else "behaviour unchanged: every run within its bounds")
    if json_path is not None:
        write_json_atomic(json_path, {
            "reference": {"revision": reference, "commit": reference_commit},
            "current": {"commit": head, "uncommitted_changes": changed},
            "inputs": {"CTChest4": "slicerio's data/CTChest4.nrrd",
                       "phantoms": f"twofivecnn phantoms --counts {PHANTOM_COUNTS} --seed {PHANTOM_SEED}"},
            "bounds": {**ARRAY_BOUNDS, "involvement": "equal", "lesion_map": "identical voxels"},
            "runs": {run: {k: v for k, v in result.items() if k != "problems"} for run, result in results.items()},
            "passed": not problems, "seconds": round(seconds, 1)})
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", default="aa700a2", help="the revision to compare with (default %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the measured differences to this JSON file")
    parser.add_argument("--dump", type=Path, help=argparse.SUPPRESS)  # one side's process
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)  # NAME=PATH, with --dump
    args = parser.parse_args(argv)
    if args.dump is not None:
        dump(args.dump, {name: Path(path) for name, path in (item.split("=", 1) for item in args.inputs)})
        return 0
    sys.path.insert(0, str(CHECKOUT / "TwoFiveCNN"))  # this checkout's library, whatever is installed
    from TwoFiveCNNLib.io.manifest import OutputConflictError

    try:
        return check(args.reference, args.json)
    except (CheckError, OutputConflictError) as error:
        print(f"behaviour_check: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
