"""The lecture's texture table: synthetic textures ordered as Gonzalez & Woods describe them."""

import pytest

from cnnlab import classical


def test_texture_table_orders_the_textures_as_the_lecture():
    textures = classical.synthetic_textures(size=64, seed=0)
    table = classical.texture_table(textures)
    assert table["smooth"]["std"] < table["regular"]["std"] < table["coarse"]["std"]
    assert table["smooth"]["smoothness"] < table["regular"]["smoothness"] < table["coarse"]["smoothness"]
    assert table["regular"]["entropy"] < table["coarse"]["entropy"]
    for stats in table.values():
        assert stats["smoothness"] == pytest.approx(1 - 1 / (1 + stats["std"] ** 2 / 255**2), rel=1e-4)
