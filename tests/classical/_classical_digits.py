"""sklearn's bundled 8x8 digits as uint8 images [N, 8, 8, 1] (0..16 scaled to 0..255) and labels [N]."""

import numpy as np
from sklearn.datasets import load_digits


def digits(count=300):
    bunch = load_digits()
    images = (bunch.images[:count] * 255.0 / 16.0).round().astype(np.uint8)[..., None]
    return images, bunch.target[:count]
