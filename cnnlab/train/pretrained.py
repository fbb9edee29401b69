"""Initialising a run from pretrained weights (``config.init_from``): a converted torchvision file or another
cnnlab checkpoint. Being written in this session (issue #16); until then a config that sets ``init_from`` is
refused with a clear error rather than silently trained from scratch."""

from __future__ import annotations


def initialize_from(config, state, *, model, mesh, shardings):
    """Returns ``state`` with its parameters (and BN statistics) taken from ``config.init_from``."""
    raise ValueError(f"config.init_from={config.get('init_from')!r}: initialising from pretrained weights is not "
                     "available in this version of cnnlab; unset it.")
