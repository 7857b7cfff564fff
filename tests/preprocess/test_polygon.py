"""The vectorised point-in-polygon test gives exactly what cv2.pointPolygonTest gives."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from wsikt.preprocess.polygon import RasterPolygon, polygon_test


def _random_contours(rng: np.random.Generator) -> list[np.ndarray]:
    img = np.zeros((120, 160), np.uint8)
    for _ in range(6):
        centre = tuple(int(v) for v in rng.integers(10, 150, 2))
        cv2.circle(img, centre, int(rng.integers(3, 30)), 1, -1)
    img[rng.random(img.shape) < 0.02] ^= 1  # speckle: tiny pieces, self-touching outlines, holes
    contours, _ = cv2.findContours(img, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    return list(contours)


@pytest.mark.parametrize("seed", range(8))
def test_polygon_test_equals_opencv(seed):
    rng = np.random.default_rng(seed)
    checked = 0
    for contour in _random_contours(rng):
        scale = (rng.uniform(1, 5), rng.uniform(1, 5))
        level0 = np.array(contour * scale, dtype="int32")  # CLAM's scaling
        verts = level0.reshape(-1, 2)
        points = np.concatenate([
            rng.integers(-5, 800, (300, 2)).astype(float),  # anywhere
            verts[:40], verts[:40] + (1, 0), verts[:40] - (0, 1),  # on and next to the outline
            rng.integers(0, 800, (60, 2)) + 0.5,  # half-pixel centres (odd patch sizes)
        ])
        expected = np.array([cv2.pointPolygonTest(level0, (float(x), float(y)), False) for x, y in points], np.int8)
        assert np.array_equal(polygon_test(points, level0), expected)
        raster = RasterPolygon.from_seg_contour(contour, level0, scale)
        assert np.array_equal(raster.test(points), expected)
        checked += len(points)
    assert checked > 1000


def test_polygon_test_square_by_hand():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]])
    pts = np.array([[5, 5], [0, 5], [10, 10], [11, 5], [-1, -1], [5, 0.5]])
    assert polygon_test(pts, square).tolist() == [1, 0, 0, -1, -1, 1]
