"""VGG (Simonyan & Zisserman 2015), configurations A/B/D/E = VGG-11/13/16/19, as torchvision defines them.

3x3 convolutions (padding 1, with bias) and ReLU, 2x2/2 max-pools between blocks, adaptive average pool to
7x7, then dense 4096 - ReLU - dropout 0.5 - dense 4096 - ReLU - dropout 0.5 - dense. The ``_bn`` variants put a
batch norm after every convolution (the convolutions keep their bias, as in torchvision).
Five unpadded pools: the smallest input is 32x32 (torchvision's min_size), where the last feature map is 1x1
and the adaptive pool repeats it to 7x7 (torchvision's behaviour), so the parameter count does not depend on
the input size. 28x28 images are rejected: pad them to 32x32 (as LeNet does) first.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnlab.models import common

# Channel counts, "M" = 2x2 max-pool (Table 1 of the paper; torchvision's cfgs).
CONFIGS: dict[str, tuple[Any, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """VGG: [batch, H, W, C] float images (H, W >= 2**pools) -> float32 logits [batch, num_classes].

    Attributes:
      num_classes: outputs.
      config: channel counts and "M" (max-pool) markers, e.g. CONFIGS["D"] for VGG-16.
      batch_norm: batch norm after every convolution.
      hidden_units: width of the two hidden dense layers (4096).
      pooled_size: side of the adaptive average pool before the classifier (7).
      dropout_rate: dropout after the two hidden dense layers (training only).
      input_channels: if set, the channel count the stem requires (checked); None accepts any at init.
      dtype: computation dtype; parameters are float32.
    """

    num_classes: int
    config: Sequence[Any]
    batch_norm: bool = False
    hidden_units: int = 4096
    pooled_size: int = 7
    dropout_rate: float = 0.5
    input_channels: int | None = None
    dtype: Any = jnp.float32

    @property
    def min_size(self) -> int:
        return 2 ** sum(1 for v in self.config if v == "M")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = common.checked_input(self, x, model_name="VGG", min_size=self.min_size,
                                 input_channels=self.input_channels,
                                 too_small_hint="Zero-pad smaller images (e.g. 28x28 by 2 pixels per side).")
        stage, conv_index = 1, 0
        for value in self.config:
            if value == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                self.sow("intermediates", f"stage{stage}", x)
                stage += 1
                continue
            name = common.STEM_CONV_NAME if conv_index == 0 else f"conv{conv_index + 1}"
            x = common.conv(int(value), 3, padding=1, dtype=self.dtype, name=name)(x)
            if self.batch_norm:
                x = common.batch_norm(train, self.dtype, name=f"bn{conv_index + 1}")(x)
            x = nn.relu(x)
            conv_index += 1
        x = common.adaptive_avg_pool(x, (self.pooled_size, self.pooled_size))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(common.dense(self.hidden_units, dtype=self.dtype, name="fc1")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(common.dense(self.hidden_units, dtype=self.dtype, name="fc2")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = common.dense(self.num_classes, dtype=self.dtype, name="fc3")(x)
        return common.classifier_output(x)


VGG11 = functools.partial(VGG, config=CONFIGS["A"])
VGG13 = functools.partial(VGG, config=CONFIGS["B"])
VGG16 = functools.partial(VGG, config=CONFIGS["D"])
VGG19 = functools.partial(VGG, config=CONFIGS["E"])
VGG11BN = functools.partial(VGG, config=CONFIGS["A"], batch_norm=True)
VGG13BN = functools.partial(VGG, config=CONFIGS["B"], batch_norm=True)
VGG16BN = functools.partial(VGG, config=CONFIGS["D"], batch_norm=True)
VGG19BN = functools.partial(VGG, config=CONFIGS["E"], batch_norm=True)
# Test-only: every VGG code path (conv, BN, pools, adaptive pool, dropout) at a tiny size.
VGGTiny = functools.partial(VGG, config=(8, "M", 16, "M"), batch_norm=True, hidden_units=32, pooled_size=2)
