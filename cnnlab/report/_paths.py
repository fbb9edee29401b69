"""Output-path handling shared by the plotting modules."""

from __future__ import annotations

import os


def check_png_path(out_png) -> str:
    """Returns ``out_png`` as a string after checking it ends in .png; creates its parent folder."""
    out_png = os.fspath(out_png)
    if not out_png.lower().endswith(".png"):
        raise ValueError(f"Output path {out_png!r} must end in .png.")
    parent = os.path.dirname(out_png)
    if parent:
        os.makedirs(parent, exist_ok=True)
    return out_png
