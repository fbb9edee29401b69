"""Loading an experiment config file and applying ``--config.FIELD=VALUE`` overrides, with short errors.

    config = load_config("experiments/configs/knn.py:mnist,runlocal", ["--config.seed=3"])

A config file defines ``get_config(arg=None)`` returning an ``ml_collections.ConfigDict``; ``:ARG`` is passed as
``arg`` (``experiments.configs.common.parse_arg`` reads it). An override names an existing field (dotted for
nested fields) and gives a Python literal or a bare string; it is converted to the field's type. New keys are
allowed only under ``model_overrides`` (constructor arguments, checked by ``cnnlab.models.get``). Every config
gets the ``UNIVERSAL_FIELDS`` (``seeds``, ``deterministic``) if its file does not set them. Every mistake
raises ``ConfigError`` with one line: what was wrong, and the closest known names.
"""

from __future__ import annotations

import ast
import difflib
import glob
import importlib.util
import os

import ml_collections

# Dicts whose keys the user may add from the command line (their values are checked by whoever reads them).
OPEN_FIELDS = ("model_overrides",)
# Fields every experiment has, whatever its kind (added with these defaults when its config file lacks them):
# --config.seeds=N runs any experiment over N seeds (cnnlab.jobs.seeds); --config.deterministic=true asks XLA for
# deterministic GPU kernels (docs/seeds.md).
UNIVERSAL_FIELDS = {"seeds": 1, "deterministic": False}
CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")


class ConfigError(ValueError):
    """A config path, argument or override that cannot be used."""


def known_configs() -> list[str]:
    return sorted(os.path.relpath(p) for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
                  if os.path.basename(p) not in ("__init__.py", "common.py"))


def load_config(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """The config of ``spec`` = ``PATH[:ARG]`` with ``overrides`` (``--config.FIELD=VALUE`` strings) applied."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"Config file {path!r} does not exist. Known configs: {', '.join(known_configs())}.")
    module_spec = importlib.util.spec_from_file_location(f"_cnnlab_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config(arg=None) function; it is not an experiment config.")
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except ValueError as e:  # the config's own check of its argument
        raise ConfigError(str(e)) from None
    for name, default in UNIVERSAL_FIELDS.items():
        if name not in config:
            with config.unlocked():
                config[name] = default
    for override in overrides:
        apply_override(config, override)
    return config


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as --config.optimizer=adam


def _convert(value, current, name: str):
    """``value`` converted to the type of the field's ``current`` value."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if str(value).lower() in words:
            return words[str(value).lower()]
        raise ConfigError(f"--config.{name} must be true or false, got {value!r}.")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, tuple) and isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(current, tuple) and isinstance(value, (int, float, str)):
        return (value,)
    if isinstance(current, str) and not isinstance(value, str):
        return str(value)
    return value


def _fields(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    names = []
    for key in config.keys():
        name = f"{prefix}{key}"
        names.append(name)
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            names += _fields(value, name + ".")
    return names


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Applies one ``--config.FIELD=VALUE`` (or ``FIELD=VALUE``) to ``config`` in place."""
    text = override[len("--config."):] if override.startswith("--config.") else override
    name, eq, raw = text.partition("=")
    if not eq or not name:
        raise ConfigError(f"{override!r}: write overrides as --config.FIELD=VALUE (e.g. --config.num_epochs=3).")
    parts = name.split(".")
    node = config
    for depth, key in enumerate(parts):
        last = depth == len(parts) - 1
        parent_name = ".".join(parts[:depth])
        if key not in node:
            if parent_name in OPEN_FIELDS and last:
                with node.unlocked():
                    node[key] = _parse_value(raw)
                return
            close = difflib.get_close_matches(".".join(parts[:depth + 1]), _fields(config), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            where = f"config.{parent_name}" if parent_name else "this config"
            raise ConfigError(f"--config.{name}: {where} has no field {key!r}.{hint}")
        if last:
            current = node[key]
            value = _convert(_parse_value(raw), current, name)
            try:
                node[key] = value
            except (TypeError, ValueError) as e:
                kind = type(current).__name__ if current is not None else "value"
                raise ConfigError(f"--config.{name}={raw}: expected a {kind} ({e}).") from None
            return
        node = node[key]
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"--config.{name}: config.{'.'.join(parts[:depth + 1])} is a value, not a group.")
