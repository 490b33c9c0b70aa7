"""VerSe centroid files: X, Y, Z are continuous voxel indices of the image in the file's axis codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from vertedge.errors import VertedgeError
from vertedge.verse import read_verse_ctd, write_verse_ctd
from vertedge.volume import from_sitk

from .conftest import SHARED_DATA

SAMPLE = SHARED_DATA / "shapes"
ORIENTATIONS = [((0, 1, 2), (False, False, False)), ((1, 2, 0), (True, False, True)), ((2, 0, 1), (False, True, True))]


def _inside_own_label(mask, centroids: dict[int, np.ndarray]) -> dict[int, int]:
    """label -> the mask's label at the voxel nearest each world LPS mm centroid."""
    ijk = np.rint(mask.world_to_index(np.array(list(centroids.values())))).astype(int)
    return dict(zip(centroids, mask.hu[ijk[:, 2], ijk[:, 1], ijk[:, 0]].astype(int).tolist(), strict=True))


@pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"no VerSe sample in {SAMPLE}")
@pytest.mark.parametrize(("perm", "flips"), ORIENTATIONS)
def test_official_sample_centroids_lie_in_their_own_labels(perm, flips):
    # the mask is PIR at 1 x 1 x 2 mm; read as millimetres every centroid falls outside its vertebra
    mask = from_sitk(sitk.ReadImage(str(SAMPLE / "sub-verse004_seg-vert_msk.nii.gz"))).reoriented(perm, flips)
    centroids = read_verse_ctd(SAMPLE / "sub-verse004_seg-subreg_ctd.json", mask)
    assert sorted(centroids) == list(range(16, 25))  # T9-L5
    assert _inside_own_label(mask, centroids) == {label: label for label in centroids}


@pytest.mark.parametrize(("perm", "flips"), ORIENTATIONS)
def test_write_read_round_trip_across_orientations(structured_volume, tmp_path, perm, flips):
    written_for = structured_volume.reoriented(perm, flips)  # anisotropic: indices differ from mm
    centroids = {20: np.array([5.0, -10.0, 30.0]), 21: np.array([20.0, 0.0, 10.0]), 26: np.array([-7.5, 3.0, 41.0])}
    path = tmp_path / "scan_ctd.json"
    write_verse_ctd(path, centroids, written_for)
    entries = json.loads(path.read_text())
    assert entries[0] == {"direction": list(written_for.axcodes())}
    for e in entries[1:]:
        np.testing.assert_allclose([e["X"], e["Y"], e["Z"]], written_for.world_to_index(centroids[e["label"]]), atol=1e-9)
    for read_perm, read_flips in ORIENTATIONS:  # the same scan stored in another orientation
        back = read_verse_ctd(path, structured_volume.reoriented(read_perm, read_flips))
        assert back.keys() == centroids.keys()
        for label, p in centroids.items():
            np.testing.assert_allclose(back[label], p, atol=1e-6)


@pytest.mark.parametrize("codes", [["P", "I"], ["P", "I", "X"], ["P", "A", "R"], "PIRS"])
def test_axis_codes_that_are_not_three_axes_are_refused(structured_volume, tmp_path, codes):
    path = tmp_path / "bad_ctd.json"
    path.write_text(json.dumps([{"direction": codes}, {"label": 20, "X": 1, "Y": 2, "Z": 3}]))
    with pytest.raises(VertedgeError, match="axis codes") as e:
        read_verse_ctd(path, structured_volume)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
