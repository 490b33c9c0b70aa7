"""The training data side (vertedge_train/data.py): targets, batches, crops, held-out seeds, the VerSe reader.

numpy only: these run without torch.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vertedge_train.config import AugmentConfig
from vertedge_train.data import (
    CLASSES,
    BatchSettings,
    crop_si,
    find_verse_cases,
    heatmap_target,
    id_target,
    phantom_scan,
    render_scan,
    sample_batch,
    scan_variants,
    spine_band,
    square_half_px,
    verse_scan,
)

from .helpers import TRAIN_PROTOCOL as PROTOCOL
from .helpers import spine_scan as _spine_scan
from .helpers import train_config as _cfg


def test_targets_peak_at_projected_centroids_and_carry_the_classes():
    item = render_scan(_spine_scan(), PROTOCOL)
    _, h, w = item["images"].shape
    assert item["images"].dtype == np.float16 and np.isfinite(item["images"]).all()
    idx = np.array([CLASSES.index(int(lab)) for lab in item["labels"]])
    for k in range(PROTOCOL.n_views):
        pts = item["points"][k]
        hm = heatmap_target((h, w), pts, 1.5, 1.0)
        for r, c in pts:
            ri, ci = round(r), round(c)
            win = hm[max(ri - 2, 0) : ri + 3, max(ci - 2, 0) : ci + 3]
            assert hm[ri, ci] == win.max() and hm[ri, ci] > 0.75
        # the bright balls are where the projected centroids are
        img = item["images"][k].astype(np.float32)
        col = round(pts[:, 1].mean())
        assert img[np.round(pts[:, 0]).astype(int), col].mean() > img[:, col].mean()
        half = square_half_px(item["px_mm"][k], 22.0)
        assert np.all((half > 1.0) & (half < 5.0))  # 22 mm at ~4 mm per pixel
        tgt = id_target((h, w), pts, idx, half)
        for (r, c), j in zip(pts, idx):
            assert tgt[round(r), round(c)] == 1 + j
        assert set(np.unique(tgt)) == {0, *(1 + idx)}


class _OneScan:
    """A pool of one rendered scan (by default the stand-in spine), as `sample_batch` reads it."""

    def __init__(self, item: dict | None = None) -> None:
        self.items = [render_scan(_spine_scan(), PROTOCOL) if item is None else item]

    def __len__(self) -> int:
        return 1


def test_sample_batch_shapes_and_pair():
    pool = _OneScan()
    rng = np.random.default_rng(0)
    cfg = BatchSettings(_cfg().augment, _cfg().heatmap, focus=1.0)
    b = sample_batch(pool, 3, (32, 32), rng, "loc", cfg)
    assert b["x"].shape == (3, 1, 32, 32) and b["heatmap"].shape == (3, 1, 32, 32)
    assert b["heatmap"].max() > 0.5
    b = sample_batch(pool, 2, (32, 32), rng, "id", cfg)
    assert b["target"].shape == (2, 32, 32) and len(b["boxes"]) == 2
    for bx, cl in zip(b["boxes"], b["classes"]):
        assert len(bx) == len(cl) and np.all(np.diff(cl) > 0)  # cranial -> caudal
    b = sample_batch(pool, 2, (32, 32), rng, "pair", cfg)
    assert b["x"].shape == b["x2"].shape == (2, 1, 32, 32)


def test_sized_variants_scale_the_anatomy_and_their_identification_squares():
    """With a size range the random variants' vertebrae lie closer together (or further apart) in the
    views by the drawn factor, and each target square is a vertebra's size at that factor."""
    scan = _spine_scan()
    items = scan_variants(scan, PROTOCOL, 4, np.random.default_rng(1), crop_prob=0.0, size_range=(0.7, 1.3))
    assert items[0]["size"] == 1.0
    sizes = [float(it["size"]) for it in items[1:]]
    assert all(0.7 <= s <= 1.3 for s in sizes) and max(sizes) - min(sizes) > 0.05
    gap = [float(np.median(np.abs(np.diff(it["points"][0][:, 0])))) for it in items]
    for s, g in zip(sizes, gap[1:]):
        assert g / gap[0] == pytest.approx(s, rel=0.05)
    cfg = BatchSettings(AugmentConfig(gamma=1.0, contrast=0.0, offset=0.0, noise=0.0), _cfg().heatmap, square_mm=40.0,
                        focus=1.0)

    def square_side(item) -> float:
        """Pixels of the middle vertebra's square along the row through it, in a full-view crop."""
        _, h, w = item["images"].shape  # a crop of the whole view
        b = sample_batch(_OneScan(item), 1, (h, w), np.random.default_rng(0), "id", cfg)
        return float((b["target"][0] == 1 + CLASSES.index(int(item["labels"][1]))).sum(1).max())

    sides = [square_side(dict(it, size=np.float32(1.0))) for it in items[1:]]
    for it, s, side in zip(items[1:], sizes, sides):
        assert square_side(it) == pytest.approx(side * s, abs=1.5)


def test_spine_band_follows_the_spine_between_and_beyond_the_points():
    band = spine_band((6, 10), np.array([[4.0, 5.0], [1.0, 2.0]]), 1.0)  # any order
    assert [np.flatnonzero(row).tolist() for row in band] == [[1, 2, 3], [1, 2, 3], [2, 3, 4], [3, 4, 5],
                                                               [4, 5, 6], [4, 5, 6]]
    assert spine_band((3, 4), np.zeros((0, 2)), 1.0).all()


def test_identification_crops_keep_only_the_band_around_the_spine():
    pool = _OneScan()
    still = AugmentConfig(gamma=1.0, contrast=0.0, offset=0.0, noise=0.0, band_prob=1.0, band_mm=(30.0, 30.0))
    cfg = BatchSettings(still, _cfg().heatmap, focus=1.0)
    item = pool.items[0]
    half_px = 30.0 / np.median(item["px_mm"])
    for seed in range(4):  # one crop per batch: the band's draw moves the generator on
        b = sample_batch(pool, 1, (48, 48), np.random.default_rng(seed), "id", cfg)
        plain = sample_batch(pool, 1, (48, 48), np.random.default_rng(seed), "id", replace_band(cfg, 0.0))
        x, y, t = b["x"][0, 0], plain["x"][0, 0], b["target"][0]
        rows, cols = np.nonzero(t)  # the vertebrae's squares lie on the spine, inside the band
        assert np.array_equal(x[rows, cols], y[rows, cols])
        spine_col = np.median(cols)
        far = np.abs(np.arange(48) - spine_col) > half_px + 4
        assert (x[:, far] == 0).all() and (y[:, far] > 0).any()
    loc = sample_batch(pool, 1, (48, 48), np.random.default_rng(3), "loc", cfg)  # localization crops keep all
    assert np.array_equal(loc["x"][0, 0], y)


def replace_band(cfg: BatchSettings, prob: float) -> BatchSettings:
    """`cfg` with the band's probability set to `prob`."""
    return dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, band_prob=prob))


def test_crop_si_drops_centroids_outside_and_keeps_world_positions():
    scan = _spine_scan()
    cropped = crop_si(scan, 0.0, 0.5)  # the inferior half (index k grows superior in LPS)
    assert 0 < len(cropped.centroids) < len(scan.centroids)
    zmax = cropped.volume.index_to_world(np.array([0, 0, cropped.volume.shape_ijk[2] - 1]))[2]
    assert all(c[2] <= zmax + 2.0 for c in cropped.centroids.values())
    # the cut is an array slice with a shifted origin: same voxels at the same world positions
    mid = crop_si(scan, 0.25, 0.75)
    lo = int(np.floor(0.25 * scan.volume.shape_ijk[2]))
    np.testing.assert_array_equal(mid.volume.hu[0], scan.volume.hu[lo])
    np.testing.assert_allclose(mid.volume.index_to_world(np.zeros(3)), scan.volume.index_to_world(np.array([0, 0, lo])))


def test_held_out_seeds_are_refused():
    with pytest.raises(ValueError):
        phantom_scan(5)


def test_verse_layout_reader(tmp_path):
    from vertedge.phantom import make_phantom
    from vertedge.verse import write_verse_ctd
    from vertedge.volume import save_volume

    ph = make_phantom(1000, "lumbar", shape=(40, 40, 48), orientation="RAS")
    for sub in ("sub-verse001", "sub-gl002"):
        (tmp_path / "rawdata" / sub).mkdir(parents=True)
        (tmp_path / "derivatives" / sub).mkdir(parents=True)
    save_volume(ph.volume, tmp_path / "rawdata" / "sub-verse001" / "sub-verse001_ct.nii.gz")
    cents = {**ph.centroids, 26: np.array(next(iter(ph.centroids.values()))) - [0, 0, 60]}  # sacrum: dropped
    write_verse_ctd(tmp_path / "derivatives" / "sub-verse001" / "sub-verse001_seg-subreg_ctd.json", cents, ph.volume)
    save_volume(ph.volume, tmp_path / "rawdata" / "sub-gl002" / "sub-gl002_dir-ax_ct.nii.gz")  # no centroids
    cases = find_verse_cases(tmp_path)
    assert [c[0].name for c in cases] == ["sub-verse001_ct.nii.gz"]
    scan = verse_scan(*cases[0])
    assert set(scan.centroids) == set(ph.centroids)
    for lab, c in ph.centroids.items():
        np.testing.assert_allclose(scan.centroids[lab], c, atol=1e-3)
    item = render_scan(scan, PROTOCOL)
    assert list(item["labels"]) == sorted(ph.centroids, key=CLASSES.index)


def test_everyday_variants_move_the_truth_with_the_patient():
    """Whatever pose, field of view, slices and noise a variant draws, each kept centroid still sits in
    its bright ball (the stand-in's vertebral body); the scan is not the stored one."""
    from vertedge_train.data import everyday_variant

    scan = _spine_scan()
    rng = np.random.default_rng(3)
    for _ in range(6):
        v = everyday_variant(scan, rng)
        assert v.centroids and set(v.centroids) <= set(scan.centroids)
        moved = [k for k in v.centroids if not np.allclose(v.centroids[k], scan.centroids[k], atol=1.0)]
        assert moved  # the patient was turned
        for k, c in v.centroids.items():
            ijk = np.round(v.volume.world_to_index(c)).astype(int)
            inside = np.all(ijk >= 0) and np.all(ijk < np.array(v.volume.shape_ijk))
            if inside:
                assert v.volume.hu[ijk[2], ijk[1], ijk[0]] > 500, (k, ijk)


def test_pool_holds_only_its_sources_and_batches_keep_the_real_fraction(tmp_path):
    """A fine-tune's pool never loads a held-out case's files; `real_fraction` of a batch is real
    whatever the number of phantom samples."""
    from vertedge_train.config import AugmentConfig
    from vertedge_train.data import Pool

    sample = render_scan(_spine_scan(), PROTOCOL)
    for tag, value in [*[(f"phantom_{1000 + i}", 0.0) for i in range(9)], ("case_abc_everyday", 1.0), ("case_out_everyday", 1.0)]:
        np.savez(tmp_path / f"{tag}_v0.npz", **{**sample, "images": np.full_like(sample["images"], value)})
    pool = Pool(tmp_path, tags={*(f"phantom_{1000 + i}" for i in range(9)), "case_abc_everyday"})
    assert len(pool) == 10 and "case_out_everyday" not in pool.tags
    flat = AugmentConfig(gamma=1.0, contrast=0.0, offset=0.0, noise=0.0)
    for fraction, expected in ((0.5, 0.5), (None, 0.1)):
        settings = BatchSettings(flat, _cfg().heatmap, focus=1.0, real_fraction=fraction)
        b = sample_batch(pool, 400, (32, 32), np.random.default_rng(0), "loc", settings)
        real = (b["x"].reshape(400, -1).max(1) > 0.5).mean()
        assert abs(real - expected) < 0.08, (fraction, real)
