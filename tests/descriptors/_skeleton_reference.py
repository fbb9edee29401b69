"""A plain numpy Zhang-Suen thinning, pixel by pixel: the cross-check for the bit-packed ``topological.skeleton``.

It applies the same removal table (scikit-image's, ``topological._ZHANG_SUEN_TABLE``) by looking up each pixel's
8-neighbour code, with none of the packing, word shifts or Boolean-function evaluation of the library version.
"""

import numpy as np

from cnnlab.descriptors import topological

# (row, col) offset and weight of each neighbour in the table index: NW 1, N 2, NE 4, E 8, SE 16, S 32, SW 64, W 128.
_TABLE_WEIGHTS = (((-1, -1), 1), ((-1, 0), 2), ((-1, 1), 4), ((0, 1), 8),
                  ((1, 1), 16), ((1, 0), 32), ((1, -1), 64), ((0, -1), 128))
_FIRST_PASS = np.isin(topological._ZHANG_SUEN_TABLE, (1, 3))
_SECOND_PASS = np.isin(topological._ZHANG_SUEN_TABLE, (2, 3))


def _sub_pass(image: np.ndarray, removable: np.ndarray) -> np.ndarray:
    height, width = image.shape
    padded = np.pad(image, 1)
    code = sum(weight * padded[1 + dr:1 + dr + height, 1 + dc:1 + dc + width] for (dr, dc), weight in _TABLE_WEIGHTS)
    return np.where(removable[code], 0, image)


def skeleton_reference(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen skeleton of one bool mask [H, W] (bool [H, W]): two parallel sub-passes until nothing changes."""
    image = np.asarray(mask, bool).astype(np.int32)
    while True:
        thinned = _sub_pass(_sub_pass(image, _FIRST_PASS), _SECOND_PASS)
        if np.array_equal(thinned, image):
            return thinned.astype(bool)
        image = thinned
