"""Binary test shapes for the descriptor tests: random masks, hand-made hard cases, spirals and snakes."""

import numpy as np
from scipy import ndimage as ndi

HEIGHT, WIDTH = 20, 24   # one canvas shape for most tests, so each jitted function compiles once


def random_masks(count, *, seed, height=HEIGHT, width=WIDTH):
    """Half salt-and-pepper masks of random density (many components, holes, diagonal contacts), half smooth
    blobs (thresholded blurred noise: a few large objects with holes and concavities)."""
    rng = np.random.default_rng(seed)
    half = count // 2
    density = rng.uniform(0.1, 0.9, (half, 1, 1))
    noise = rng.random((half, height, width)) < density
    sigma = rng.uniform(1.0, 3.0)
    blurred = ndi.gaussian_filter(rng.random((count - half, height, width)), (0, sigma, sigma))
    levels = np.quantile(blurred.reshape(count - half, -1), rng.uniform(0.2, 0.8, count - half), axis=1)
    blobs = blurred > np.diagonal(levels)[:, None, None]
    return np.concatenate([noise, blobs]).astype(bool)


def _canvas():
    return np.zeros((HEIGHT, WIDTH), bool)


def hard_cases():
    """name -> mask [HEIGHT, WIDTH]: the cases that separate 4- from 8-adjacency and the degenerate ones."""
    cases = {}
    c = _canvas(); c[3, 3] = c[4, 4] = True; cases["diagonal_pair"] = c                    # 4: 2, 8: 1
    c = _canvas(); c[2:10, 2:10] = (np.indices((8, 8)).sum(0) % 2) == 0; cases["checkerboard"] = c
    c = _canvas(); c[1:18, 1:18] = True; c[3:16, 3:16] = False; c[5:14, 5:14] = True; c[7:12, 7:12] = False
    c[9, 9] = True; cases["nested_rings_with_dot"] = c
    c = _canvas(); c[2:9, 2:9] = True; c[3:8, 3:8] = False; c[2, 2] = False; cases["ring_missing_corner"] = c
    c = _canvas(); c[2:9, 2:9] = True; c[3:8, 3:8] = False; c[5, 8] = False; c[4, 8] = False
    cases["ring_with_gap"] = c
    c = _canvas(); c[2:9, 2:9] = True; c[3:8, 3:8] = False; c[8, 5] = False; c[9, 5] = True
    cases["ring_with_diagonal_leak"] = c                                   # background leaks only diagonally
    c = np.ones((HEIGHT, WIDTH), bool); c[0:5, 0:5] = False; c[8:12, 20:24] = False; c[14:16, 5:8] = False
    cases["holes_at_border"] = c                                           # only the inner one is a hole
    c = _canvas(); c[0, 0] = True; cases["corner_pixel"] = c
    c = _canvas(); c[10, 12] = True; cases["single_pixel"] = c
    cases["empty"] = _canvas()
    cases["full"] = np.ones((HEIGHT, WIDTH), bool)
    c = _canvas(); c[np.arange(15), np.arange(15) + 3] = True; cases["diagonal_line"] = c
    c = _canvas(); c[np.arange(14), np.arange(14) + 3] = True; c[np.arange(14), np.arange(14) + 4] = True
    cases["thick_diagonal"] = c
    c = _canvas(); c[5:7, 5:7] = True; cases["block_2x2"] = c
    c = _canvas(); c[10, 2:20] = True; c[3:18, 11] = True; cases["cross"] = c
    c = _canvas(); c[2:17, 3:6] = True; c[2:5, 3:20] = True; c[9:12, 3:15] = True; cases["letter_f"] = c
    c = _canvas(); c[:, 7] = True; c[12, :] = True; cases["cross_through_borders"] = c
    c = _canvas(); c[1:3, 1:3] = True; c[3, 3] = True; c[4:6, 4:6] = True; cases["blocks_touching_diagonally"] = c
    return cases


def spiral(size):
    """A one-pixel-wide square spiral with one-pixel gaps, inside a size x size canvas (one component)."""
    grid = np.zeros((size, size), bool)
    top, left, bottom, right = 0, 0, size - 1, size - 1
    while top <= bottom and left <= right:
        grid[top, left:right + 1] = True
        grid[top:bottom + 1, right] = True
        if top + 2 <= bottom:
            grid[bottom, left:right + 1] = True
        if left + 2 <= right and top + 2 <= bottom:
            grid[top + 2:bottom + 1, left] = True
            grid[top + 2, left:left + 3] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    return grid


def snake(height, width):
    """Boustrophedon: every other row filled, joined alternately at the right and left end (one component)."""
    grid = np.zeros((height, width), bool)
    grid[0::2, :] = True
    for row in range(1, height, 2):
        grid[row, width - 1 if (row // 2) % 2 == 0 else 0] = True
    return grid


def diagonal_snake(size):
    """A snake whose turns are diagonal contacts only: one component under 8-adjacency, many under 4."""
    grid = snake(size, size)
    for row in range(1, size - 1, 2):
        col = size - 1 if (row // 2) % 2 == 0 else 0
        grid[row - 1, col] = False
        grid[row + 1, col] = False
    return grid
