"""Compiled kernels reached through ``jax.ffi``, each with a tested pure-JAX fallback.

``conv``: oneDNN's 2-D convolutions (forward and both gradients) for XLA:CPU. Build with
``python -m cnnlab.native build``; ``python -m cnnlab.native status`` says whether they are usable here.
"""
