"""Build cnnlab's compiled kernels: ``python -m cnnlab.native build`` (``scripts/install.sh`` runs it).

One shared library today, ``_onednn_conv.so`` (``onednn_conv.cc``): oneDNN's convolutions as XLA FFI handlers.
It compiles with the system's C++ compiler (``CXX``, default ``g++``) against

  * the XLA FFI headers that jaxlib ships (``jax.ffi.include_dir()``),
  * oneDNN's headers and library from the PyPI packages ``onednn-devel-cpu-gomp`` / ``onednn-cpu-gomp``
    (installed with cnnlab on x86-64 Linux; they put ``include/oneapi/dnnl`` and ``lib/libdnnl.so`` under
    ``sys.prefix``), found by ``find_onednn``; ``CNNLAB_ONEDNN_ROOT`` names another oneDNN 3.x installation.

Where anything is missing, the build says what and exits non-zero, and cnnlab keeps ``lax`` convolutions
(``cnnlab.native.conv`` falls back, tested). The library is written next to this file, so an editable install
finds it; it is not tracked by git.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import sysconfig

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "onednn_conv.cc"
TARGET = HERE / "_onednn_conv.so"


class BuildError(RuntimeError):
    """The library cannot be built here; the message says what is missing and how to get it."""


def find_onednn() -> pathlib.Path:
    """The prefix holding include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so."""
    candidates = [os.environ["CNNLAB_ONEDNN_ROOT"]] if os.environ.get("CNNLAB_ONEDNN_ROOT") else []
    candidates += [sys.prefix, sysconfig.get_config_var("prefix") or "", "/usr/local", "/usr"]
    for prefix in candidates:
        root = pathlib.Path(prefix)
        if (root / "include/oneapi/dnnl/dnnl.hpp").exists() and any((root / "lib").glob("libdnnl.so*")):
            return root
    raise BuildError("oneDNN not found (include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so under "
                     f"{', '.join(c for c in candidates if c)}). Install it with: python -m pip install "
                     "onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0 (or set CNNLAB_ONEDNN_ROOT).")


def command(onednn: pathlib.Path, output: pathlib.Path) -> list[str]:
    """The compiler command line (the runtime path to libdnnl is baked in with -rpath)."""
    import jax.ffi

    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise BuildError(f"no C++ compiler {compiler!r} on PATH: install g++ (Debian: apt-get install g++) "
                         "or set CXX.")
    library_dir = onednn / "lib"
    return [compiler, "-O2", "-std=c++17", "-fPIC", "-shared", "-w", str(SOURCE),
            f"-I{onednn / 'include'}", f"-I{jax.ffi.include_dir()}", f"-L{library_dir}", "-ldnnl",
            f"-Wl,-rpath,{library_dir}", "-o", str(output)]


def build(verbose: bool = True) -> pathlib.Path:
    """Compile the library into ``TARGET`` (atomically: a failed build leaves any previous one in place)."""
    onednn = find_onednn()
    partial = TARGET.with_suffix(".so.part")
    cmd = command(onednn, partial)
    if verbose:
        print("   " + shlex.join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BuildError(f"the compiler failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    os.replace(partial, TARGET)
    check = subprocess.run([sys.executable, "-c", "from cnnlab.native import conv; import sys; "
                            "sys.exit(0 if conv.load() is not None else conv.why_unavailable())"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise BuildError(f"built {TARGET.name}, but it does not load: {(check.stderr or check.stdout).strip()}")
    return TARGET
