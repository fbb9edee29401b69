"""Fixtures for the training tests: a tiny, fast LeNet-5-on-digits config (8x8 digits zero-padded to 28x28), and one
uninterrupted reference run (``_train_helpers.reference_config``) shared by the resume and signal tests."""

import os
import shutil

import pytest
from _train_helpers import reference_config, tiny_config


_CACHE_SETTINGS = {"jax_compilation_cache_dir": "JAX_COMPILATION_CACHE_DIR",
                   "jax_persistent_cache_min_compile_time_secs": "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                   "jax_persistent_cache_min_entry_size_bytes": "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"}


@pytest.fixture(scope="session")
def compilation_cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla_compilation_cache"))


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(compilation_cache_dir):
    """One persistent XLA compilation cache for these tests' runs, in this process and in the subprocesses they
    start: each run jits fresh closures, so without it every run compiles the same programs again (13 s -> 1 s
    for a 2-step run). The executables are the same, so are the numbers. Restored after each module."""
    import jax

    values = {"jax_compilation_cache_dir": compilation_cache_dir, "jax_persistent_cache_min_compile_time_secs": 0,
              "jax_persistent_cache_min_entry_size_bytes": 0}
    previous = {name: getattr(jax.config, name) for name in values}
    previous_env = {env: os.environ.get(env) for env in _CACHE_SETTINGS.values()}
    for name, value in values.items():
        jax.config.update(name, value)
        os.environ[_CACHE_SETTINGS[name]] = str(value)
    yield
    for name, value in previous.items():
        jax.config.update(name, value)
    for env, value in previous_env.items():
        if value is None:
            os.environ.pop(env, None)
        else:
            os.environ[env] = value


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
