"""Lung segmentation and involvement on real chest CT (the slicerio CT and its expert lung segments)
and on phantoms at 1 mm and 5 mm slices, in every stored orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from TwoFiveCNNLib.data.phantoms import generate_phantom
from TwoFiveCNNLib.io.volume import Volume, stored_flipped
from TwoFiveCNNLib.transforms.involvement import (
    BAND_NAMES,
    CONSOLIDATION,
    GROUND_GLASS,
    grade_for_share,
    measure_involvement,
)
from TwoFiveCNNLib.transforms.lungs import LEFT_LUNG, RIGHT_LUNG, LungSettings, segment_lungs

slicerio = pytest.importorskip("slicerio")

# Phantom seeds whose drawn grids have 1 mm and 5 mm slices (see phantoms._sample_grid).
THIN_SLICE_SEED, THICK_SLICE_SEED = 5, 57


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.fixture(scope="module")
def reference_lungs(chest: Volume, chest_ct_path: Path) -> np.ndarray:
    """slicerio's expert segments on the CT's canonical grid: 1 right lung, 2 left lung."""
    segmentation = slicerio.read_segmentation(str(chest_ct_path.with_name("Segmentation.seg.nrrd")))
    assert list(segmentation["referenceImageExtentOffset"]) == [0, 0, 0]
    values = {s["name"]: s["labelValue"] for s in segmentation["segments"]}
    voxels_kji = np.transpose(segmentation["voxels"], (2, 1, 0))
    labels = np.zeros(voxels_kji.shape, dtype=np.uint8)
    labels[voxels_kji == values["right lung"]] = RIGHT_LUNG
    labels[voxels_kji == values["left lung"]] = LEFT_LUNG
    return Volume.from_original(labels, chest.geometry).array


def outside_air(hu: np.ndarray) -> np.ndarray:
    """Air connected, within its slice, to the image border."""
    from scipy import ndimage

    air = hu < -400
    labels, _ = ndimage.label(air, structure=np.array([[[0] * 3] * 3, [[0, 1, 0], [1, 1, 1], [0, 1, 0]], [[0] * 3] * 3]))
    edges = np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(),
                                      labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    return np.isin(labels, edges[edges > 0])


# ------------------------------------------------------------------------------------------ real CT


@pytest.mark.parametrize("flips", [(False, False, False), (False, True, True), (True, False, False)],
                         ids=["as stored", "LPS in-plane", "feet-first flipped"])
def test_lungs_match_the_expert_segments_in_every_orientation(chest, reference_lungs, flips):
    volume = stored_flipped(chest, flips)
    np.testing.assert_array_equal(volume.array, chest.array)  # the same anatomy, stored otherwise
    labels = segment_lungs(volume.array, volume.spacing_zyx)
    for side in (RIGHT_LUNG, LEFT_LUNG):
        assert dice(labels == side, reference_lungs == side) >= 0.9, side
    # Mapped back to the file's own storage order, it still lies on the same anatomy.
    stored = volume.to_original(labels)
    assert Volume.from_original(stored, volume.geometry).array.tolist() == labels.tolist()


def test_no_outside_air_no_airways_in_the_lungs(chest, reference_lungs):
    labels = segment_lungs(chest.array, chest.spacing_zyx)
    lungs = labels > 0
    assert not (lungs & outside_air(chest.array)).any()
    # Trachea and main bronchi: air (below -950 HU) that the expert left out of the lungs.
    airway_air = (chest.array < -950) & (reference_lungs == 0) & ~outside_air(chest.array)
    assert airway_air.sum() > 20, "the CT shows its trachea"
    assert (lungs & airway_air).sum() <= 0.05 * airway_air.sum()
    assert set(np.unique(labels)) == {0, RIGHT_LUNG, LEFT_LUNG}
    # Right lung on the patient's right: lower canonical x (LPS).
    x = np.arange(labels.shape[2])
    assert x[(labels == RIGHT_LUNG).any(axis=(0, 1))].mean() < x[(labels == LEFT_LUNG).any(axis=(0, 1))].mean()


def test_a_cropped_field_of_view_that_cuts_the_body(chest, reference_lungs):
    """The body touches the image's edges: the air left around it still stays out of the lungs."""
    _, y, x = chest.array.shape
    rows = np.nonzero((reference_lungs > 0).any(axis=(0, 2)))[0]
    crop = (slice(None), slice(max(0, rows[0] - 4), min(y, rows[-1] + 5)), slice(8, x - 8))
    hu = np.ascontiguousarray(chest.array[crop])
    labels = segment_lungs(hu, chest.spacing_zyx)
    for side in (RIGHT_LUNG, LEFT_LUNG):
        assert dice(labels == side, reference_lungs[crop] == side) >= 0.9
    assert not ((labels > 0) & outside_air(hu)).any()


def test_untouched_real_ct_is_normal(chest):
    labels = segment_lungs(chest.array, chest.spacing_zyx)
    report, bands = measure_involvement(chest.array, labels, chest.spacing_zyx)
    assert report["involved_share"] < 0.05 and report["grade"] == "CT-0"
    # The bands add up to the lung volume, and the mL figures are voxel counts times the voxel volume.
    voxel_ml = float(np.prod(chest.spacing_zyx)) / 1000
    lungs = report["lungs"]
    assert lungs["voxels"] == int((labels > 0).sum()) == int((bands > 0).sum())
    assert lungs["volume_ml"] == pytest.approx(lungs["voxels"] * voxel_ml, abs=0.01)
    assert sum(lungs["bands_ml"].values()) == pytest.approx(lungs["volume_ml"], abs=0.05)
    assert sum(lungs["bands_share"].values()) == pytest.approx(1.0)
    for value, name in BAND_NAMES.items():
        assert lungs["bands_ml"][name] == pytest.approx(int((bands == value).sum()) * voxel_ml, abs=0.01)
    per_lung = report["per_lung"]
    assert per_lung["right"]["voxels"] + per_lung["left"]["voxels"] == lungs["voxels"]
    # Zones counted directly from the voxels' coordinates: thirds of the lung's z extent, halves of its y extent.
    z, y, _ = np.nonzero(labels == LEFT_LUNG)
    third = (z.max() + 1 - z.min()) / 3
    upper = z >= z.min() + 2 * third
    dorsal = y >= (y.min() + y.max() + 1) / 2
    left_zones = per_lung["left"]["zones"]
    assert (left_zones["upper"]["voxels"], left_zones["dorsal"]["voxels"]) == (int(upper.sum()), int(dorsal.sum()))
    consolidation = bands[labels == LEFT_LUNG] == CONSOLIDATION
    assert left_zones["dorsal"]["bands_ml"]["consolidation"] == pytest.approx(
        int((consolidation & dorsal).sum()) * voxel_ml, abs=0.01)
    for record in per_lung.values():
        zones = record["zones"]
        assert zones["upper"]["voxels"] + zones["middle"]["voxels"] + zones["lower"]["voxels"] == record["voxels"]
        assert zones["ventral"]["voxels"] + zones["dorsal"]["voxels"] == record["voxels"]


def edge_lesions(chest: Volume, reference_lungs: np.ndarray):
    """Consolidations (+30 HU balls of radius 12 and 20 mm) on the right lung's pleura, posterior,
    lateral and anterior, at three heights: a plain threshold mask cuts each of them out."""
    right = reference_lungs == RIGHT_LUNG
    spacing = np.array(chest.spacing_zyx)
    zz, yy, xx = np.ogrid[: right.shape[0], : right.shape[1], : right.shape[2]]
    zs = np.nonzero(right.any(axis=(1, 2)))[0]
    for height in (0.35, 0.5, 0.65):
        z = int(zs[0] + height * (zs[-1] - zs[0]))
        ys, xs = np.nonzero(right[z])
        for cy, cx in ((ys.max(), xs[ys == ys.max()].mean()), (ys[xs == xs.min()].mean(), xs.min()),
                       (ys.min(), xs[ys == ys.min()].mean())):
            for radius in (12, 20):
                distance = np.sqrt(((zz - z) * spacing[0]) ** 2 + ((yy - cy) * spacing[1]) ** 2
                                   + ((xx - cx) * spacing[2]) ** 2)
                lesion = (distance < radius) & right
                hu = chest.array.astype(np.int32)
                hu[lesion] = 30
                yield hu, lesion


def edge_lesions_inside(chest: Volume, reference_lungs: np.ndarray, settings: LungSettings | None = None
                        ) -> tuple[list[float], int, int]:
    """Per edge lesion, the share of its voxels in the right lung; over all, the voxels caught and the
    caught voxels counted as involved."""
    inside, caught_voxels, involved_voxels = [], 0, 0
    for hu, lesion in edge_lesions(chest, reference_lungs):
        assert not (hu[lesion] < -400).any()  # a threshold mask would leave the whole lesion out
        labels = segment_lungs(hu, chest.spacing_zyx, settings or LungSettings())
        caught = labels[lesion] == RIGHT_LUNG
        inside.append(caught.mean())
        _, bands = measure_involvement(hu, labels, chest.spacing_zyx)
        caught_voxels += int(caught.sum())
        involved_voxels += int(np.isin(bands[lesion][caught], (CONSOLIDATION, GROUND_GLASS)).sum())
    return inside, caught_voxels, involved_voxels


def test_consolidation_at_the_lung_edge_is_mostly_inside_and_counted(chest, reference_lungs):
    """Closing each lung (in-plane and along z) and growing its edge lesions out to the chest wall bring
    most of an edge consolidation into the lung, where a plain threshold keeps none of it; what is
    inside is counted as involved. Without the growth the outer layer stays out; without the seeds'
    spread along z, the lesions' thin caps above and below their deepest slice do."""
    inside, caught_voxels, involved_voxels = edge_lesions_inside(chest, reference_lungs)
    # Measured 0.95 on average (0.58..1.0); lesions of 12 mm radius on 3 x 3 x 10 mm voxels are partly
    # taken for vessels (measured 0.73 of the caught voxels involved overall).
    assert np.mean(inside) >= 0.9 and min(inside) >= 0.5, np.round(inside, 2)
    assert involved_voxels >= 0.7 * caught_voxels
    for weaker, measured in ((LungSettings(rim_mm=0), "0.80 (0.48..0.96)"),
                             (LungSettings(rim_seed_spread_mm=0), "0.89 (0.58..1.0)")):
        fewer, _, _ = edge_lesions_inside(chest, reference_lungs, weaker)
        assert np.mean(fewer) < np.mean(inside) - 0.03, (weaker, measured, np.round(fewer, 2), np.round(inside, 2))


@pytest.mark.xfail(strict=True, reason="issue 12: 58-100 % inside; wanted: at least 90 % everywhere. The misses "
                                       "are lesions that replace a lung's tip in its slice (here the front tip beside "
                                       "the sternum, toward the midline), beyond where the lung of the slices above "
                                       "and below reaches: nothing tells where the tip was")
def test_consolidation_at_the_lung_edge_is_inside_everywhere(chest, reference_lungs):
    for hu, lesion in edge_lesions(chest, reference_lungs):
        assert (segment_lungs(hu, chest.spacing_zyx)[lesion] == RIGHT_LUNG).mean() >= 0.9


def chest_with_edge_lesions() -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, np.ndarray, np.ndarray]:
    """An elliptic chest (soft tissue, 40 HU; 12 slices of 5 mm) holding two ellipsoid lungs (-850 HU),
    each with a +30 HU ball of 15 mm radius replacing it at its edge above the middle: the right one
    against the lateral chest wall, the left one against the mediastinum. Returns HU, spacing, the
    right lung as drawn, its lesion and the left lung's."""
    spacing = (5.0, 1.5, 1.5)
    z, y, x = np.mgrid[:12, :160, :220]
    z_mm, y_mm, x_mm = (z - 5.5) * spacing[0], (y - 80) * spacing[1], x * spacing[2]
    hu = np.full(z.shape, -1000, dtype=np.int16)
    hu[(y_mm / 105) ** 2 + ((x_mm - 165) / 150) ** 2 < 1] = 40
    right = (y_mm / 75) ** 2 + ((x_mm - 90) / 48) ** 2 + (z_mm / 40) ** 2 < 1
    left = (y_mm / 75) ** 2 + ((x_mm - 240) / 48) ** 2 + (z_mm / 40) ** 2 < 1
    hu[right | left] = -850

    def ball(x_centre_mm: float) -> np.ndarray:
        return np.sqrt((z_mm - 2.5) ** 2 + y_mm ** 2 + (x_mm - x_centre_mm) ** 2) < 15

    lateral, medial = right & ball(42), left & ball(192)
    hu[lateral | medial] = 30
    return hu, spacing, right, lateral, medial


def test_edge_lesion_rims_grow_toward_the_chest_wall_and_never_into_the_mediastinum():
    hu, spacing, right, lateral, medial = chest_with_edge_lesions()
    grown = segment_lungs(hu, spacing)
    closed = segment_lungs(hu, spacing, LungSettings(rim_mm=0))
    # Measured 0.87 inside with the growth (0.83 without the seeds' spread along z), 0.67 with closing alone.
    assert (grown[lateral] == RIGHT_LUNG).mean() >= (closed[lateral] == RIGHT_LUNG).mean() + 0.1
    # Against the mediastinum nothing grows: the left lung is as closing left it.
    assert np.array_equal(grown == LEFT_LUNG, closed == LEFT_LUNG) and (grown[medial] == LEFT_LUNG).mean() < 1
    # Each step must go farther from the body's centre: that alone keeps the growth out of the
    # mediastinum here, with the depth gate open (without both, the left lung grows into it).
    ungated = segment_lungs(hu, spacing, LungSettings(rim_outer_depth_share=1.0))
    assert np.array_equal(ungated == LEFT_LUNG, closed == LEFT_LUNG)
    # The growth is the cost too: where closing reached the lung's edge it goes on into the chest wall,
    # but never farther than ``rim_mm``.
    added = (grown > 0) & (closed == 0)
    beyond = ndimage.distance_transform_edt(~right, sampling=spacing)[added]
    assert 0 < beyond.max() <= LungSettings().rim_mm


def test_box_morphology_equals_scipy_ndimage():
    """The shifted-array erosion and dilation give what scipy.ndimage's min/max filters give (mirrored
    edges, ndimage's window placement), for odd and even boxes on small random masks."""
    from scipy import ndimage
    from TwoFiveCNNLib.transforms.morphology import box_dilation, box_opening

    rng = np.random.default_rng(0)
    for _ in range(100):
        mask = rng.random(tuple(rng.integers(1, 12, 3))) < rng.random()
        size = tuple(int(s) for s in rng.integers(1, 8, 3))
        opened = ndimage.maximum_filter(ndimage.minimum_filter(mask.view(np.uint8), size=size), size=size) > 0
        np.testing.assert_array_equal(box_opening(mask, size), opened)
        np.testing.assert_array_equal(box_dilation(mask, size), ndimage.maximum_filter(mask.view(np.uint8), size=size) > 0)


def test_outward_growth_steps_equal_a_minimum_filter():
    """The rims' growth in shifted boolean steps reaches what the plain rule does: a voxel joins when a
    4-neighbour of the front lies nearer the body centre (the least front radius around it, by
    scipy.ndimage's minimum filter), on random slices with both lungs' seeds."""
    from TwoFiveCNNLib.transforms.lungs import _grow_outward

    cross = ndimage.generate_binary_structure(2, 1)
    rng = np.random.default_rng(1)
    for _ in range(50):
        shape = tuple(int(s) for s in rng.integers(2, 24, 2))
        labels = rng.choice([0, RIGHT_LUNG, LEFT_LUNG], size=shape, p=[0.8, 0.1, 0.1]).astype(np.uint8)
        seeds = (labels > 0) & (rng.random(shape) < 0.5)
        open_tissue = (labels == 0) & (rng.random(shape) < 0.8)
        radius = rng.random(shape) * 10
        steps = int(rng.integers(1, 5))
        expected, still_open = labels.copy(), open_tissue.copy()
        for side in (RIGHT_LUNG, LEFT_LUNG):
            front = seeds & (expected == side)
            for _ in range(steps):
                nearest = ndimage.minimum_filter(np.where(front, radius, np.inf), footprint=cross,
                                                 mode="constant", cval=np.inf)
                front = still_open & (radius > nearest)
                expected[front] = side
                still_open &= ~front
        _grow_outward(labels, seeds, open_tissue, radius, steps)
        np.testing.assert_array_equal(labels, expected)


# ------------------------------------------------------------------------------------------ phantoms


@pytest.mark.parametrize("seed", [THIN_SLICE_SEED, THICK_SLICE_SEED], ids=["1 mm slices", "5 mm slices"])
@pytest.mark.parametrize("orientation", ["LPS", "RAS", "LPI"])
def test_phantom_lungs_and_involvement_at_thin_and_thick_slices(seed, orientation):
    normal = generate_phantom(0, seed, orientation)
    volume = Volume.from_original(normal.array_kji, normal.geometry)
    expected_slice = {THIN_SLICE_SEED: 1.0, THICK_SLICE_SEED: 5.0}[seed]
    assert volume.spacing_zyx[0] == pytest.approx(expected_slice)
    labels = segment_lungs(volume.array, volume.spacing_zyx)
    assert dice(labels > 0, normal.lung_mask_zyx) >= 0.9
    assert set(np.unique(labels)) == {0, RIGHT_LUNG, LEFT_LUNG}
    report, _ = measure_involvement(volume.array, labels, volume.spacing_zyx)
    assert report["grade"] == "CT-0" and report["involved_share"] < 0.05

    diseased = generate_phantom(2, seed, orientation)  # the same patient with CT-2 lesions
    volume = Volume.from_original(diseased.array_kji, diseased.geometry)
    labels = segment_lungs(volume.array, volume.spacing_zyx)
    truth = diseased.lung_mask_zyx | diseased.lesion_mask_zyx
    assert dice(labels > 0, truth) >= 0.9
    report, _ = measure_involvement(volume.array, labels, volume.spacing_zyx)
    assert report["involved_share"] == pytest.approx(diseased.info["involved_fraction"], abs=0.1)


def test_grades_follow_mosmed_thresholds():
    assert [grade_for_share(s) for s in (0.0, 0.049, 0.05, 0.249, 0.25, 0.5, 0.749, 0.75, 1.0)] == [
        "CT-0", "CT-0", "CT-1", "CT-1", "CT-2", "CT-3", "CT-3", "CT-4", "CT-4"]


def test_learned_lesion_voxels_join_the_lung_they_touch():
    """A lesion network's voxels are added where the HU mask left them out, in a lesion's HU range and
    connected to a lung (taking its side); a region touching both lungs is split by nearness."""
    from TwoFiveCNNLib.transforms.involvement import InvolvementSettings, learned_lung_additions

    lungs = np.zeros((3, 20, 30), dtype=np.uint8)
    lungs[:, 5:15, 2:8] = RIGHT_LUNG
    lungs[:, 5:15, 22:28] = LEFT_LUNG
    hu = np.full(lungs.shape, -850, dtype=np.int16)
    hu[lungs == 0] = 40  # soft tissue around the lungs
    learned = np.zeros(lungs.shape, dtype=bool)
    learned[:, 15:18, 3:7] = True  # dorsal to the right lung, touching it
    learned[:, 1:3, 12:16] = True  # nowhere near a lung
    learned[1, 9:11, 8:22] = True  # a bridge from lung to lung, in slice 1 only
    learned[:, 5:8, 28:30] = True  # beside the left lung, but bone
    hu[:, 5:8, 28:30] = 700
    added = learned_lung_additions(lungs, hu, learned)
    assert (added[:, 15:18, 3:7] == RIGHT_LUNG).all()
    assert not added[:, 1:3, 12:16].any() and not added[:, 5:8, 28:30].any()
    assert (added[1, 9:11, 8:15] == RIGHT_LUNG).all() and (added[1, 9:11, 15:22] == LEFT_LUNG).all()
    assert not added[lungs > 0].any()
    # Aerated voxels (the HU mask's business) and nothing learned add nothing.
    assert learned_lung_additions(lungs, np.full(lungs.shape, -900, dtype=np.int16), learned) is None
    assert learned_lung_additions(lungs, hu, np.zeros_like(learned)) is None
    assert InvolvementSettings().learned_max_hu == 200


def test_learned_lesions_are_measured_as_involved_lung(chest, reference_lungs):
    """A dense consolidation replacing the lower dorsal right lung, out to the chest wall: the HU mask
    leaves it out; given as learned lesion voxels it is in the lungs, counted as involved, and the
    bands still add up."""
    from TwoFiveCNNLib.transforms.involvement import analyse_lungs, with_learned_lesions

    right = reference_lungs == RIGHT_LUNG
    zs = np.nonzero(right.any(axis=(1, 2)))[0]
    ys = np.nonzero(right.any(axis=(0, 2)))[0]
    lesion = right.copy()
    lesion[: zs[0] + (zs[-1] - zs[0]) // 2] = False
    lesion[:, : ys[0] + 2 * (ys[-1] - ys[0]) // 3] = False
    hu = chest.array.astype(np.int16).copy()
    hu[lesion] = 35
    analysis = analyse_lungs(hu, chest.spacing_zyx)
    assert analysis.factors == (1, 1, 1)  # CTChest4's voxels are coarser than the analysis grid
    outside = lesion & (analysis.lungs == 0)
    assert outside.sum() > 0.3 * lesion.sum()
    extended = with_learned_lesions(analysis, hu, lesion)
    assert (extended.lungs[lesion] == RIGHT_LUNG).mean() > 0.98
    assert np.isin(extended.bands[lesion], (CONSOLIDATION, GROUND_GLASS)).mean() > 0.9
    report = extended.report
    assert report["involved_share"] > analysis.report["involved_share"] + 0.02
    assert report["lungs"]["voxels"] == int((extended.lungs > 0).sum()) == int((extended.bands > 0).sum())
    assert report["learned_added_ml"] == pytest.approx(
        int((extended.lungs > 0).sum() - (analysis.lungs > 0).sum()) * np.prod(chest.spacing_zyx) / 1000, abs=0.01)
    assert with_learned_lesions(analysis, hu, np.zeros_like(lesion)) is analysis


def test_learned_voxels_beside_a_lung_base_tip_are_not_added():
    """Below a lung's base only its last tip (or gut gas taken for it) is left in a slice; the network's
    lesion voxels beside it are liver, spleen or bowel, and are not added. The same voxels beside a
    slice with a full lung are."""
    from TwoFiveCNNLib.transforms.involvement import InvolvementSettings, learned_lung_additions

    lungs = np.zeros((6, 30, 30), dtype=np.uint8)
    lungs[1:, 5:25, 3:13] = RIGHT_LUNG  # 200 voxels per slice
    lungs[0, 5:8, 3:6] = RIGHT_LUNG  # the base's tip: 9 voxels, under a tenth of 200
    hu = np.full(lungs.shape, -850, dtype=np.int16)
    hu[lungs == 0] = 40
    learned = np.zeros(lungs.shape, dtype=bool)
    learned[:, 5:20, 13:20] = True  # beside the lung in every slice
    added = learned_lung_additions(lungs, hu, learned)
    assert not added[0].any()
    assert (added[1:][learned[1:]] == RIGHT_LUNG).all()
    everything = learned_lung_additions(lungs, hu, learned, InvolvementSettings(learned_min_slice_share=0.0))
    assert (everything[learned] == RIGHT_LUNG).all()
