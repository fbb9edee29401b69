"""Fixtures for the training tests: a tiny, fast LeNet-5-on-digits config (8x8 digits zero-padded to 28x28), and one
uninterrupted reference run (``_train_helpers.reference_config``) shared by the resume and signal tests."""

import shutil

import pytest
from _train_helpers import reference_config, tiny_config


@pytest.fixture
def no_compilation_cache():
    """For tests that measure compilation: every program is compiled for real."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    yield
    jax.config.update("jax_enable_compilation_cache", True)


@pytest.fixture
def make_config():
    return tiny_config


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """(workdir, results) of the uninterrupted reference run; tests copy the workdir, never change it."""
    from cnnlab.jobs import train_and_evaluate

    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    results = train_and_evaluate(reference_config(), workdir)
    return workdir, results


@pytest.fixture
def reference_copy(reference_run, tmp_path):
    """A private copy of the reference workdir (checkpoints, metrics.jsonl, config.json, results.json)."""
    workdir = str(tmp_path / "copy")
    shutil.copytree(reference_run[0], workdir)
    return workdir
