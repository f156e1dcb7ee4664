"""Preprocessed cache on real (tiny) volume files: hits, misses, content keys and corrupt entries."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import TwoFiveCNNLib.data.cache as cache_module
from TwoFiveCNNLib.data.cache import PreprocessedCache, default_cache_root, study_files
from TwoFiveCNNLib.data.index import Study
from TwoFiveCNNLib.io.volume import Geometry, read_volume, write_volume
from TwoFiveCNNLib.transforms.preprocess import PreprocessConfig, to_model_grid

GEOMETRY = Geometry(size=(40, 40, 10), spacing=(1.0, 1.0, 2.5), origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
CONFIG = PreprocessConfig(in_plane=16, n_slices=8)


def phantom(seed: int = 0) -> np.ndarray:
    """A tiny body-like int16 volume (air around a soft-tissue disc with noisy lungs), ``[k, j, i]``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:40, :40]
    body = (y - 20) ** 2 + (x - 20) ** 2 < 15**2
    array = np.full((10, 40, 40), -1000, dtype=np.int16)
    array[:, body] = rng.integers(-900, 100, size=(10, int(body.sum())))
    return array


def write_study(path: Path, seed: int = 0) -> Path:
    return write_volume(phantom(seed), GEOMETRY, path)


def write_dicom_series(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, plane in enumerate(phantom(seed)):
        image = sitk.GetImageFromArray(plane)
        for tag, value in {"0008|0060": "CT", "0020|000d": "1.2.3", "0020|000e": "1.2.3.4",
                           "0020|0013": str(k + 1), "0020|0032": f"0\\0\\{k * 2.5}",
                           "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "1\\1"}.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{k:03d}.dcm"))
        writer.Execute(image)
    return folder


@pytest.fixture
def cache(tmp_path) -> PreprocessedCache:
    return PreprocessedCache(tmp_path / "cache")


@pytest.fixture
def study(tmp_path) -> Path:
    return write_study(tmp_path / "data" / "study_0001.nii.gz")


def test_miss_then_hit_without_rereading(cache, study, monkeypatch):
    expected, expected_mapping = to_model_grid(read_volume(study), CONFIG)
    first, mapping = cache.get_with_mapping(study, CONFIG)
    assert (cache.misses, cache.hits) == (1, 0)
    assert first.dtype == np.float32 and first.shape == (8, 16, 16)
    np.testing.assert_allclose(first, expected, atol=1e-3)
    assert mapping == expected_mapping

    entry = cache.entry_path(study, CONFIG)
    written = entry.stat().st_mtime_ns

    def no_reading(path):
        raise AssertionError(f"re-read {path}")

    monkeypatch.setattr(cache_module, "read_volume", no_reading)
    second = cache.get(study, CONFIG)
    assert (cache.misses, cache.hits) == (1, 1)
    np.testing.assert_array_equal(second, first)  # a hit returns exactly what the miss returned
    assert entry.stat().st_mtime_ns == written


def test_file_hash_is_memoized(cache, study, monkeypatch):
    digest = cache.content_hash(study)

    def no_open(*args, **kwargs):
        raise AssertionError("rehashed an unchanged file")

    monkeypatch.setattr(cache_module, "open", no_open, raising=False)
    assert cache.content_hash(study) == digest


def test_key_is_content_not_name(cache, study, tmp_path):
    cache.get(study, CONFIG)
    renamed = tmp_path / "copies" / "other_name.nii.gz"
    renamed.parent.mkdir()
    shutil.copy(study, renamed)
    cache.get(renamed, CONFIG)
    assert (cache.misses, cache.hits) == (1, 1)

    different = write_study(tmp_path / "data" / "study_0002.nii.gz", seed=1)
    cache.get(different, CONFIG)
    assert cache.misses == 2


def test_edited_file_misses(cache, study):
    before = cache.get(study, CONFIG)
    write_volume(phantom(seed=9), GEOMETRY, study)
    after = cache.get(study, CONFIG)
    assert cache.misses == 2 and not np.array_equal(before, after)


def test_changed_config_misses(cache, study):
    cache.get(study, CONFIG)
    other = PreprocessConfig.with_window("lung", in_plane=16, n_slices=8)
    assert cache.get(study, other).shape == (8, 16, 16)
    assert cache.misses == 2
    assert cache.entry_path(study, CONFIG) != cache.entry_path(study, other)
    assert cache.get(study, PreprocessConfig(in_plane=16, n_slices=4)).shape == (4, 16, 16)
    assert cache.misses == 3


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape"])
def test_corrupt_entry_is_rebuilt(cache, study, damage):
    good = cache.get(study, CONFIG)
    entry = cache.entry_path(study, CONFIG)
    if damage == "truncate":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    elif damage == "garbage":
        entry.write_bytes(b"not an npz file")
    else:
        np.savez(entry, grid=np.zeros((2, 2), np.float16), mapping=np.array('{"canonical_shape": [1, 1, 1], '
                 '"crop_yx": [0, 1, 0, 1], "grid_shape": [8, 16, 16]}'))

    np.testing.assert_array_equal(cache.get(study, CONFIG), good)
    assert (cache.misses, cache.hits) == (2, 0)
    np.testing.assert_array_equal(cache.get(study, CONFIG), good)
    assert cache.hits == 1


def test_dicom_folder(cache, tmp_path):
    series = write_dicom_series(tmp_path / "series")
    grid = cache.get(series, CONFIG)
    np.testing.assert_allclose(grid, to_model_grid(read_volume(series), CONFIG)[0], atol=1e-3)
    shutil.copytree(series, tmp_path / "copy")
    cache.get(tmp_path / "copy", CONFIG)
    assert (cache.misses, cache.hits) == (1, 1)

    before = cache.content_hash(series)
    (series / ".DS_Store").write_bytes(b"ignored")
    assert cache.content_hash(series) == before
    shutil.copy(series / "IM000.dcm", series / "IM999.dcm")
    assert cache.content_hash(series) != before


def test_header_with_separate_data_file(cache, tmp_path):
    header = tmp_path / "study.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(phantom()), str(header), useCompression=False)
    files = study_files(header)
    assert [p.name for p in files] == ["study.mhd", "study.raw"]
    before = cache.content_hash(header)
    data = bytearray(files[1].read_bytes())
    data[0] ^= 0xFF
    files[1].write_bytes(bytes(data))
    assert cache.content_hash(header) != before


def test_warm_reports_progress(cache, tmp_path):
    paths = [write_study(tmp_path / f"s{i}.nii.gz", seed=i) for i in range(3)]
    studies = [Study(p.name, p, "CT-0") for p in paths]
    calls = []
    assert cache.warm(studies, CONFIG, progress=lambda done, total: calls.append((done, total))) == 3
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert cache.warm(paths, CONFIG) == 0


def test_warm_in_worker_processes(cache, tmp_path):
    paths = [write_study(tmp_path / f"s{i}.nii.gz", seed=i) for i in range(3)]
    assert cache.warm(paths, CONFIG, workers=2) == 3
    fresh = PreprocessedCache(cache.root)
    fresh.get(paths[0], CONFIG)
    assert (fresh.misses, fresh.hits) == (0, 1)


def test_missing_study_and_default_root(cache, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        cache.get(tmp_path / "missing.nii.gz", CONFIG)
    monkeypatch.setenv("TWOFIVECNN_CACHE", str(tmp_path / "env_cache"))
    assert PreprocessedCache().root == tmp_path / "env_cache"
    monkeypatch.delenv("TWOFIVECNN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_root() == Path(os.path.expanduser("~")) / ".cache" / "twofivecnn"


def test_a_new_lung_measurement_misses(cache, study, monkeypatch):
    """Entries hold lung features: a study measured by an older lung method is preprocessed again."""
    from TwoFiveCNNLib.transforms import involvement

    cache.get(study, CONFIG)
    before = cache.entry_path(study, CONFIG)
    monkeypatch.setattr(involvement, "MEASUREMENT_METHOD", involvement.MEASUREMENT_METHOD + 1)
    assert cache.entry_path(study, CONFIG) != before
    cache.get(study, CONFIG)
    assert cache.misses == 2


def test_a_killed_writers_half_entry_is_swept_when_the_entry_is_built(cache, study):
    """SIGKILL skips atomic_path's cleanup; the next build of that entry removes the leftover, and only
    a dead writer's (a concurrent process's temporary stays)."""
    import subprocess
    import sys

    from TwoFiveCNNLib.io.atomic import temporary_path

    entry = cache.entry_path(study, CONFIG)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = temporary_path(entry)
    dead = dead.rename(dead.with_name(dead.name.replace(f"-{os.getpid()}.", f"-{child.pid}.")))
    alive = temporary_path(entry)  # this process's: alive
    cache.get(study, CONFIG)
    assert entry.is_file() and not dead.exists() and alive.exists()
