"""The ``classical`` job: descriptors and pixels -> SVM / random forest / MLP, one pipeline chosen on validation.

    results = run(config, "runs/classical_digits")     # config: experiments/configs/classical.py

Loads ``config.dataset`` (seeded subsets of ``config.train_size`` / ``config.test_size`` images, 0 = all), computes
every feature set (``cnnlab.classical.feature_sets``: descriptors, pixels, both, each descriptor family), fits
each classifier of the config on a stratified ``1 - validation_fraction`` of the training subset, and chooses the
pipeline with the best accuracy on the held-out rest (the first of equals in config order); the test split only
reports the accuracy of what was chosen. Also KMeans on each of ``cluster_feature_sets`` and the lecture's
texture table.

Writes into the workdir: config.json, results.json (``cnnlab.jobs.workdir``'s schema; ``details`` holds every
pipeline row, the clustering scores, the texture table and the figure names), predictions.npy and
test_labels.npy (the chosen pipeline's int32 prediction and the true class of each test image), results.md, and the figures
descriptors.png, pipelines.png, confusion.png, textures.png. Ends by printing the headline and where the
results and report are.
"""

from __future__ import annotations

import pickle
import time

import numpy as np
from sklearn.model_selection import train_test_split

from cnnlab import classical, data, descriptors
from cnnlab.jobs import workdir as workdir_lib
from cnnlab.report import classical as classical_report, confusion

FIGURES = {"descriptors": "descriptors.png", "pipelines": "pipelines.png", "confusion": "confusion.png",
           "textures": "textures.png"}


def _subset(images, labels, size, seed):
    """A seeded random subset of ``size`` images (all of them when size is 0 or not smaller)."""
    if size and size < len(images):
        order = np.random.default_rng(seed).permutation(len(images))[:size]
        return images[order], labels[order]
    return images, labels


def _headline(results: dict) -> str:
    chosen = results["chosen"]
    return (f"Classical on {results['dataset']}: chosen {chosen['classifier']} on {chosen['features']} (validation "
            f"{chosen['validation_accuracy']:.4f}), test accuracy {results['test']['accuracy']:.4f}")


def run(config, workdir: str) -> dict:
    """Runs the classical pipeline of ``config`` in ``workdir``; returns the results record (results.json)."""
    began = time.perf_counter()
    wd = workdir_lib.Workdir(workdir)
    with wd.locked(command=f"classical on {config.dataset}"):
        wd.write_config(config)
        load_kwargs = {"data_dir": config.get("data_dir")} if config.get("data_dir") else {}
        train = data.load(config.dataset, "train", **load_kwargs)
        test = data.load(config.dataset, "test", **load_kwargs)
        x_train, y_train = _subset(train.images, train.labels, config.train_size, config.seed)
        # A seeds run fixes the test subset for all its seeds (config.test_subset_seed): same images, paired stats.
        x_test, y_test = _subset(test.images, test.labels, config.test_size,
                                 config.get("test_subset_seed", config.seed + 1))
        families = [f for f in config.feature_sets if f in descriptors.FAMILIES]

        # Compile describe for both batch shapes before timing (the first call per shape traces and compiles).
        start = time.perf_counter()
        for x in (x_train, x_test):
            classical.descriptor_matrix(x[:min(2048, len(x))], connectivity=config.connectivity,
                                        levels=config.levels)
        compile_s = time.perf_counter() - start
        train_sets, names, descriptor_s = classical.feature_sets(x_train, connectivity=config.connectivity,
                                                                 levels=config.levels, families=families)
        test_sets, _, _ = classical.feature_sets(x_test, connectivity=config.connectivity, levels=config.levels,
                                                 families=families)

        # The pipeline is chosen on a stratified validation part of the training subset, never on the test
        # split: every pipeline is fitted on the rest of the training subset and scored on both.
        fit_rows, val_rows = train_test_split(np.arange(len(y_train)), test_size=config.validation_fraction,
                                              stratify=y_train, random_state=config.seed)
        rows, chosen_row, chosen_model = [], None, None
        for feature_set in config.feature_sets:
            classifiers = config.classifiers if feature_set in ("descriptors", "pixels", "both") \
                else config.family_classifiers
            for classifier in classifiers:
                model = classical.make_classifier(classifier, seed=config.seed, svm_c=config.svm_c,
                                                  forest_trees=config.forest_trees,
                                                  mlp_hidden=tuple(config.mlp_hidden),
                                                  mlp_max_iter=config.mlp_max_iter)
                (x_tr, _), (x_te, feature_s) = train_sets[feature_set], test_sets[feature_set]
                scores = classical.fit_and_score(model, x_tr[fit_rows], y_train[fit_rows], x_te, y_test,
                                                 feature_s_per_1000=feature_s, x_val=x_tr[val_rows],
                                                 y_val=y_train[val_rows])
                row = {"method": f"{classifier}/{feature_set}", "classifier": classifier, "features": feature_set,
                       "num_features": int(x_tr.shape[1]), **scores}
                rows.append(row)
                # Strictly better only: the first of equals (config order) stays chosen.
                if chosen_row is None or row["validation_accuracy"] > chosen_row["validation_accuracy"]:
                    chosen_row, chosen_model = row, model
                print(f"[classical] {config.dataset} {classifier:>13} on {feature_set:<11}: "
                      f"validation {scores['validation_accuracy']:.4f}  test {scores['test_accuracy']:.4f}  "
                      f"fit {scores['train_time_s']:.1f}s", flush=True)

        clustering = [{"features": feature_set,
                       **classical.clustering_scores(train_sets[feature_set][0], y_train,
                                                     num_clusters=train.num_classes, seed=config.seed)}
                      for feature_set in config.cluster_feature_sets]
        textures = classical.synthetic_textures(seed=config.seed)
        texture_table = classical.texture_table(textures, config.levels)

        # Figures: the descriptors on the training subset, every pipeline, the chosen one's test confusion.
        class_names = list(train.class_names)
        classical_report.plot_descriptor_distributions(train_sets["descriptors"][0], y_train, names, class_names,
                                                       wd.file(FIGURES["descriptors"]))
        classical_report.plot_validation_scores(rows, wd.file(FIGURES["pipelines"]),
                                                chosen_method=chosen_row["method"],
                                                validation_count=len(val_rows), test_count=len(y_test))
        predictions = chosen_model.predict(test_sets[chosen_row["features"]][0])
        matrix = confusion.confusion_matrix(np.asarray(y_test, np.int64), np.asarray(predictions, np.int64),
                                            len(class_names))
        confusion.plot_confusion(matrix, class_names, wd.file(FIGURES["confusion"]),
                                 title=f"{chosen_row['classifier']} on {chosen_row['features']}, "
                                       f"{config.dataset} test split")
        classical_report.plot_textures(textures, texture_table, wd.file(FIGURES["textures"]))

        uses_descriptors = chosen_row["features"] != "pixels"
        train_s = chosen_row["train_time_s"] + (descriptor_s * len(fit_rows) / 1000.0 if uses_descriptors else 0.0)
        results = workdir_lib.results_record(
            kind="classical", dataset=config.dataset, train_count=len(fit_rows), validation_count=len(val_rows),
            test_count=len(y_test), test_accuracy=chosen_row["test_accuracy"], train_s=train_s,
            compile_s=compile_s, inference_s_per_1000=chosen_row["inference_s_per_1000"],
            wall_s=time.perf_counter() - began, model_name="classical", num_params=None,
            model_bytes=len(pickle.dumps(chosen_model)),
            chosen={"method": chosen_row["method"], "classifier": chosen_row["classifier"],
                    "features": chosen_row["features"], "validation_accuracy": chosen_row["validation_accuracy"]},
            chosen_text=f"{chosen_row['classifier']} on {chosen_row['features']}",
            details={"classifiers": rows, "clustering": clustering, "textures": texture_table,
                     "descriptor_names": names, "descriptor_s_per_1000_images": descriptor_s,
                     "connectivity": config.connectivity, "test_confusion": matrix, "plots": dict(FIGURES)})
        results_path = wd.write_results(results)
        wd.write_predictions(predictions, y_test)
        report = wd.write_text("results.md", classical_report.classical_markdown(
            results, FIGURES, workdir_lib.describe_machine(results["machine"])))
        print(_headline(results), flush=True)
        print(f"Results: {results_path}  Report: {report}", flush=True)
    return results
