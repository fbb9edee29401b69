"""The classical pipeline as a library: image descriptors -> scikit-learn classifiers and clustering.

    from cnnlab import classical
    features, names = classical.descriptor_matrix(images)          # [N, D] float64, D = 29 descriptors
    model = classical.make_classifier("svm", seed=0).fit(features, labels)
    classical.clustering_scores(features, labels, num_clusters=10, seed=0)   # {"adjusted_rand_index", "purity"}

Every classifier is a scikit-learn ``Pipeline``: inf -> NaN, ``SimpleImputer(median)`` (descriptors that are
undefined for an image are NaN or inf, e.g. the axis ratio of a straight line; they become the training median) ->
``StandardScaler`` -> ``SVC(kernel="rbf")`` | ``RandomForestClassifier`` | ``MLPClassifier``. Clustering is
``KMeans`` on the same standardised features, scored against the labels by the adjusted Rand index and purity.
``synthetic_textures`` and ``texture_table`` give the lecture's Gonzalez & Woods texture statistics.

Arrays in, arrays and dicts out: no file I/O and no plotting here. The ``classical`` job (loading data, choosing
a pipeline on validation, results.json, figures) is ``cnnlab.jobs.classical``; its figures are
``cnnlab.report.classical``.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from scipy import ndimage as ndi
from sklearn.cluster import KMeans
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import adjusted_rand_score
from sklearn.metrics.cluster import contingency_matrix
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC

from cnnlab import descriptors

CLASSIFIERS = ("svm", "random_forest", "mlp")
FEATURE_SETS = ("descriptors", "pixels", "both", "topological", "geometric", "statistical")


def descriptor_matrix(images: np.ndarray, *, connectivity: int = 8, levels: int = 256,
                      families=("topological", "geometric", "statistical"), batch_size: int = 2048
                      ) -> tuple[np.ndarray, list[str]]:
    """Descriptors of ``images`` [N, H, W, 1] as a float64 matrix [N, D] and the D column names.

    ``describe`` runs on batches of one size (the last one padded): ``batch_size``, or for fewer images the
    next power of two, so that a handful of compilations serve every N. NaN/inf entries are kept (the
    classifier pipelines impute them).
    """
    unknown = [f for f in families if f not in descriptors.FAMILIES]
    if unknown:
        raise ValueError(f"Unknown descriptor families {unknown}; known: {sorted(descriptors.FAMILIES)}.")
    names = [name for family in families for name in descriptors.FAMILIES[family]]
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 1 or len(images) == 0:
        raise ValueError(f"descriptor_matrix needs a non-empty batch [N, H, W, 1]; got {images.shape}.")
    columns = {name: [] for name in names}
    batch_size = min(batch_size, 1 << (len(images) - 1).bit_length())
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        real = len(chunk)
        if real < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - real,) + chunk.shape[1:], chunk.dtype)])
        values = jax.device_get(descriptors.describe(chunk, connectivity=connectivity, levels=levels))
        for name in names:
            columns[name].append(np.asarray(values[name][:real], np.float64))
    return np.stack([np.concatenate(columns[name]) for name in names], axis=1), names


def pixel_matrix(images: np.ndarray) -> np.ndarray:
    """Raw pixels as features: [N, H*W*C] float64 in [0, 1] (uint8 images are divided by 255)."""
    images = np.asarray(images)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return images.reshape(len(images), -1).astype(np.float64) / scale


def non_finite_to_nan(features: np.ndarray) -> np.ndarray:
    """inf -> NaN, so that the imputer treats every undefined descriptor alike."""
    features = np.asarray(features, np.float64)
    return np.where(np.isfinite(features), features, np.nan)


def _preprocessing():
    return [FunctionTransformer(non_finite_to_nan), SimpleImputer(strategy="median", keep_empty_features=True),
            StandardScaler()]


def make_classifier(name: str, *, seed: int = 0, svm_c: float = 10.0, forest_trees: int = 200,
                    mlp_hidden: tuple[int, ...] = (256,), mlp_max_iter: int = 300, n_jobs: int = 2) -> Pipeline:
    """A scikit-learn pipeline imputer -> scaler -> classifier; ``name`` in CLASSIFIERS."""
    if name == "svm":
        model = SVC(kernel="rbf", C=svm_c, gamma="scale")
    elif name == "random_forest":
        model = RandomForestClassifier(n_estimators=forest_trees, n_jobs=n_jobs, random_state=seed)
    elif name == "mlp":
        model = MLPClassifier(hidden_layer_sizes=tuple(mlp_hidden), max_iter=mlp_max_iter, early_stopping=True,
                              random_state=seed)
    else:
        raise ValueError(f"Unknown classifier {name!r}; known: {list(CLASSIFIERS)}.")
    return make_pipeline(*_preprocessing(), model)


def purity(labels_true, labels_pred) -> float:
    """Fraction of points whose cluster's majority label is their label (1.0 = every cluster pure)."""
    table = contingency_matrix(labels_true, labels_pred)
    return float(table.max(axis=0).sum() / table.sum())


def clustering_scores(features: np.ndarray, labels: np.ndarray, *, num_clusters: int, seed: int = 0) -> dict:
    """KMeans (k = num_clusters, 10 inits) on imputed, standardised features; ARI and purity vs ``labels``."""
    pipeline = make_pipeline(*_preprocessing(), KMeans(n_clusters=num_clusters, n_init=10, random_state=seed))
    start = time.perf_counter()
    clusters = pipeline.fit_predict(features)
    return {"adjusted_rand_index": float(adjusted_rand_score(labels, clusters)),
            "purity": purity(labels, clusters), "fit_time_s": time.perf_counter() - start}


def fit_and_score(model: Pipeline, x_train, y_train, x_test, y_test, *, feature_s_per_1000: float = 0.0,
                  x_val=None, y_val=None) -> dict:
    """Fits ``model``; test/train (and, given ``x_val``/``y_val``, validation) accuracy, fit time, and end-to-end
    inference time per 1000 images (``feature_s_per_1000``, the time to compute these features, plus the
    pipeline's predict time)."""
    start = time.perf_counter()
    model.fit(x_train, y_train)
    train_time = time.perf_counter() - start
    start = time.perf_counter()
    predictions = model.predict(x_test)
    predict_time = time.perf_counter() - start
    scores = {
        "test_accuracy": float(np.mean(predictions == y_test)),
        "train_accuracy": float(np.mean(model.predict(x_train) == y_train)),
        "train_time_s": train_time,
        "inference_s_per_1000": feature_s_per_1000 + 1000.0 * predict_time / len(x_test),
    }
    if x_val is not None:
        scores["validation_accuracy"] = float(np.mean(model.predict(x_val) == y_val))
    return scores


def feature_sets(images: np.ndarray, *, connectivity: int = 8, levels: int = 256,
                 families=("topological", "geometric", "statistical")) -> tuple[dict, list[str], float]:
    """Every feature set of ``images`` [N, H, W, 1]: ``({set: (matrix [N, D_set] float64, s_per_1000)}, names,
    descriptor_s_per_1000)``.

    Sets: "descriptors" (all 29), "pixels", "both" (descriptors then pixels) and each family in ``families``
    (its columns of the descriptor matrix). ``s_per_1000`` is the wall time per 1000 images to compute that
    set (call once on a few images first so that the descriptor compilation is not counted).
    """
    start = time.perf_counter()
    matrix, names = descriptor_matrix(images, connectivity=connectivity, levels=levels)
    descriptor_s = 1000.0 * (time.perf_counter() - start) / len(images)
    start = time.perf_counter()
    pixels = pixel_matrix(images)
    pixel_s = 1000.0 * (time.perf_counter() - start) / len(images)
    column = {name: i for i, name in enumerate(names)}
    sets = {"descriptors": (matrix, descriptor_s), "pixels": (pixels, pixel_s),
            "both": (np.concatenate([matrix, pixels], axis=1), descriptor_s + pixel_s)}
    for family in families:
        sets[family] = (matrix[:, [column[n] for n in descriptors.FAMILIES[family]]], descriptor_s)
    return sets, names, descriptor_s


# ----------------------------------------------------------------------------------------------- textures
def synthetic_textures(size: int = 128, seed: int = 0) -> dict[str, np.ndarray]:
    """The lecture's three textures as uint8 [size, size]: smooth (slowly varying, low contrast), coarse
    (large blobs of strong contrast and fine grain), regular (a periodic pattern of stripes and dots)."""
    rng = np.random.default_rng(seed)
    smooth = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 8)
    smooth = 110 + 12 * smooth / smooth.std()
    coarse = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 3)
    coarse = 120 + 70 * coarse / coarse.std() + rng.normal(0, 15, (size, size))
    y, x = np.mgrid[0:size, 0:size]
    regular = 120 + 40 * np.sin(2 * np.pi * x / 8) * np.sin(2 * np.pi * y / 8) + 25 * np.sin(2 * np.pi * x / 16)
    return {name: np.clip(np.round(image), 0, 255).astype(np.uint8)
            for name, image in [("smooth", smooth), ("coarse", coarse), ("regular", regular)]}


def texture_table(textures: dict[str, np.ndarray], levels: int = 256) -> dict[str, dict[str, float]]:
    """The six Gonzalez & Woods statistics of each texture: {texture: {statistic: value}}."""
    return {name: {k: float(v) for k, v in descriptors.statistics(image, levels).items()}
            for name, image in textures.items()}
