"""The classical pipeline: image descriptors -> scikit-learn classifiers and clustering.

    from cnnlab import classical
    features, names = classical.descriptor_matrix(images)          # [N, D] float64, D = 29 descriptors
    model = classical.make_classifier("svm", seed=0).fit(features, labels)
    classical.clustering_scores(features, labels, num_clusters=10, seed=0)   # {"adjusted_rand_index", "purity"}

Every classifier is a scikit-learn ``Pipeline``: inf -> NaN, ``SimpleImputer(median)`` (descriptors that are
undefined for an image are NaN or inf, e.g. the axis ratio of a straight line; they become the training median) ->
``StandardScaler`` -> ``SVC(kernel="rbf")`` | ``RandomForestClassifier`` | ``MLPClassifier``. Clustering is
``KMeans`` on the same standardised features, scored against the labels by the adjusted Rand index and purity.

``run_experiment(config, workdir)`` is the ``kind="classical"`` job of ``experiments/main.py``: each classifier on
the descriptors, on the raw pixels and on both; each descriptor family alone; KMeans on each feature set; and the
Gonzalez & Woods texture table. Writes config.json, results.json, results.md, textures.png into ``workdir``.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from sklearn.cluster import KMeans
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import adjusted_rand_score
from sklearn.metrics.cluster import contingency_matrix
from sklearn.model_selection import train_test_split
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


# ----------------------------------------------------------------------------------------------- textures
def synthetic_textures(size: int = 128, seed: int = 0) -> dict[str, np.ndarray]:
    """The lecture's three textures as uint8 [size, size]: smooth (slowly varying, low contrast), coarse
    (large blobs of strong contrast and fine grain), regular (a periodic pattern of stripes and dots)."""
    from scipy import ndimage as ndi

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


def plot_textures(textures: dict[str, np.ndarray], table: dict[str, dict[str, float]], out_png: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(textures), figsize=(4 * len(textures), 5))
    for axis, (name, image) in zip(np.atleast_1d(axes), textures.items()):
        stats = table[name]
        axis.imshow(image, cmap="gray", vmin=0, vmax=255)
        axis.set_title(name)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_xlabel(f"mean {stats['mean']:.1f}  std {stats['std']:.2f}\nR {stats['smoothness']:.4f}  "
                        f"mu3 {stats['third_moment']:.3f}\nU {stats['uniformity']:.4f}  e {stats['entropy']:.2f}")
    figure.tight_layout()
    figure.savefig(out_png, dpi=100)
    plt.close(figure)
    return out_png


def texture_markdown(table: dict[str, dict[str, float]]) -> str:
    lines = ["| texture | mean | std | R (smoothness) | third moment | uniformity | entropy (bits) |",
             "|---|---|---|---|---|---|---|"]
    for name, s in table.items():
        lines.append(f"| {name} | {s['mean']:.2f} | {s['std']:.2f} | {s['smoothness']:.4f} | "
                     f"{s['third_moment']:.4f} | {s['uniformity']:.4f} | {s['entropy']:.3f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- experiment
def _subset(images, labels, size, seed):
    if size and size < len(images):
        order = np.random.default_rng(seed).permutation(len(images))[:size]
        return images[order], labels[order]
    return images, labels


def _features(config, images, family_names):
    """Feature matrices per feature set, and the seconds per 1000 images each took to compute."""
    start = time.perf_counter()
    matrix, names = descriptor_matrix(images, connectivity=config.connectivity, levels=config.levels)
    descriptor_s = 1000.0 * (time.perf_counter() - start) / len(images)
    start = time.perf_counter()
    pixels = pixel_matrix(images)
    pixel_s = 1000.0 * (time.perf_counter() - start) / len(images)
    column = {name: i for i, name in enumerate(names)}
    sets = {"descriptors": (matrix, descriptor_s), "pixels": (pixels, pixel_s),
            "both": (np.concatenate([matrix, pixels], axis=1), descriptor_s + pixel_s)}
    for family in family_names:
        sets[family] = (matrix[:, [column[n] for n in descriptors.FAMILIES[family]]], descriptor_s)
    return sets, names


def run_experiment(config, workdir: str) -> dict:
    """Classifiers and clustering on descriptors / pixels / both / each family; the texture table (see module)."""
    from cnnlab import data

    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    load_kwargs = {"data_dir": config.get("data_dir")} if config.get("data_dir") else {}
    train = data.load(config.dataset, "train", **load_kwargs)
    test = data.load(config.dataset, "test", **load_kwargs)
    x_train, y_train = _subset(train.images, train.labels, config.train_size, config.seed)
    x_test, y_test = _subset(test.images, test.labels, config.test_size, config.seed + 1)
    families = [f for f in config.feature_sets if f in descriptors.FAMILIES]
    # Compile describe for both batch shapes before timing (the first call per shape traces and compiles).
    for x in (x_train, x_test):
        descriptor_matrix(x[:min(2048, len(x))], connectivity=config.connectivity, levels=config.levels)
    train_sets, names = _features(config, x_train, families)
    test_sets, _ = _features(config, x_test, families)

    # The best pipeline is chosen on a stratified validation part of the training subset, never on the test
    # split: every pipeline is fitted on the rest of the training subset and scored on both.
    fit_rows, val_rows = train_test_split(np.arange(len(y_train)), test_size=config.validation_fraction,
                                          stratify=y_train, random_state=config.seed)

    rows = []
    for feature_set in config.feature_sets:
        classifiers = config.classifiers if feature_set in ("descriptors", "pixels", "both") \
            else config.family_classifiers
        for classifier in classifiers:
            model = make_classifier(classifier, seed=config.seed, svm_c=config.svm_c,
                                    forest_trees=config.forest_trees, mlp_hidden=tuple(config.mlp_hidden),
                                    mlp_max_iter=config.mlp_max_iter)
            (x_tr, _), (x_te, feature_s) = train_sets[feature_set], test_sets[feature_set]
            scores = fit_and_score(model, x_tr[fit_rows], y_train[fit_rows], x_te, y_test,
                                   feature_s_per_1000=feature_s, x_val=x_tr[val_rows], y_val=y_train[val_rows])
            rows.append({"method": f"{classifier}/{feature_set}", "classifier": classifier,
                         "features": feature_set, "num_features": int(x_tr.shape[1]), **scores})
            print(f"[classical] {config.dataset} {classifier:>13} on {feature_set:<11}: "
                  f"validation {scores['validation_accuracy']:.4f}  test {scores['test_accuracy']:.4f}  "
                  f"fit {scores['train_time_s']:.1f}s", flush=True)

    clustering = []
    for feature_set in config.cluster_feature_sets:
        scores = clustering_scores(train_sets[feature_set][0], y_train, num_clusters=train.num_classes,
                                   seed=config.seed)
        clustering.append({"features": feature_set, **scores})

    textures = synthetic_textures(seed=config.seed)
    table = texture_table(textures, config.levels)
    plot_textures(textures, table, os.path.join(workdir, "textures.png"))

    best = max(rows, key=lambda r: r["validation_accuracy"])  # first of equals: config order
    results = {
        "dataset": config.dataset, "train_size": int(len(fit_rows)), "validation_size": int(len(val_rows)),
        "test_size": int(len(x_test)),
        "connectivity": config.connectivity, "descriptor_names": names,
        "descriptor_s_per_1000_images": train_sets["descriptors"][1],
        "device": jax.devices()[0].device_kind if jax.devices() else "unknown",
        "classifiers": rows, "clustering": clustering, "textures": table,
        "best": {"method": best["method"], "validation_accuracy": best["validation_accuracy"],
                 "test_accuracy": best["test_accuracy"],
                 "train_time_s": best["train_time_s"], "inference_s_per_1000": best["inference_s_per_1000"]},
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(results_markdown(results))
    return results


def results_markdown(results: dict) -> str:
    lines = [f"# Classical pipeline on {results['dataset']}", "",
             f"Fitted on {results['train_size']} training images, chosen on {results['validation_size']} held-out "
             f"training images (validation), tested on {results['test_size']} test images; descriptors "
             f"under {results['connectivity']}-adjacency computed at "
             f"{results['descriptor_s_per_1000_images']:.3f} s per 1000 images ({results['device']}).", "",
             "| method | features (D) | validation accuracy | test accuracy | train accuracy | fit time (s) | "
             "inference s/1000 |",
             "|---|---|---|---|---|---|---|"]
    for r in results["classifiers"]:
        lines.append(f"| {r['classifier']} | {r['features']} ({r['num_features']}) | "
                     f"{r['validation_accuracy']:.4f} | {r['test_accuracy']:.4f} | "
                     f"{r['train_accuracy']:.4f} | {r['train_time_s']:.2f} | {r['inference_s_per_1000']:.3f} |")
    lines += ["", "KMeans (k = number of classes) on the training subset:", "",
              "| features | adjusted Rand index | purity |", "|---|---|---|"]
    for c in results["clustering"]:
        lines.append(f"| {c['features']} | {c['adjusted_rand_index']:.4f} | {c['purity']:.4f} |")
    best = results["best"]
    lines += ["", f"Best on validation: **{best['method']}** (validation accuracy "
              f"{best['validation_accuracy']:.4f}), test accuracy {best['test_accuracy']:.4f}.", "",
              "Gonzalez & Woods statistics of three synthetic textures (textures.png):", "",
              texture_markdown(results["textures"]), ""]
    return "\n".join(lines)
