"""LeNet-5 (LeCun, Bottou, Bengio, Haffner 1998, "Gradient-based learning applied to document recognition").

Layout (the 1998 paper's C1-S2-C3-S4-C5-F6-output on a 32x32 input):
  C1 conv 5x5, 6 maps (32 -> 28) - S2 pool 2x2 (-> 14) - C3 conv 5x5, 16 maps (-> 10) - S4 pool 2x2 (-> 5)
  - C5 120 units (a 5x5 convolution over the 5x5x16 map == a dense layer on its 400 values) - F6 84 - classes.
28x28 inputs (MNIST) are zero-padded by 2 pixels on each side to 32x32, as the paper centred the 28x28 digits
in a 32x32 field. Parameters with 1 input channel and 10 classes: 156 + 2,416 + 48,120 + 10,164 + 850 = 61,706.

Two forms (``style``):
  * "original": tanh activations and average pooling (the paper's subsampling layers, here without their
    trainable coefficient and bias; C3 fully connected to S2, not the paper's partial connection table;
    a plain dense output layer instead of the RBF units; this is the usual "LeNet-5" with 61,706 parameters);
  * "modern" (default): ReLU and max pooling.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnlab.models import common, conv_pool

STYLES = ("modern", "original")


class LeNet5(nn.Module):
    """LeNet-5 on [batch, 28 or 32, 28 or 32, C] float images -> float32 logits [batch, num_classes].

    Attributes:
      num_classes: number of output classes.
      style: "modern" (ReLU, max pooling) or "original" (tanh, average pooling).
      input_channels: if set, the channel count the stem requires (checked); None accepts any at init.
      dtype: computation dtype (float32 or bfloat16); parameters are float32.
    """

    num_classes: int
    style: str = "modern"
    input_channels: int | None = None
    dtype: Any = jnp.float32

    min_size = 28
    allowed_sizes = (28, 32)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.style not in STYLES:
            raise ValueError(f"lenet5: style must be one of {STYLES}, got {self.style!r}.")
        x = common.checked_input(self, x, model_name="lenet5", min_size=self.min_size,
                                 input_channels=self.input_channels, allowed_sizes=self.allowed_sizes)
        if x.shape[1] == 28:
            x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
        activation = "tanh" if self.style == "original" else "relu"
        act = jnp.tanh if self.style == "original" else nn.relu
        pool = "avg" if self.style == "original" else "max"
        # Glorot-uniform init suits tanh; LeCun-style fan-in init keeps ReLU activations of unit scale too.
        kinit = nn.initializers.glorot_uniform() if self.style == "original" else nn.initializers.he_normal()
        # Each conv -> activation -> 2x2 pool is one matrix product (3.7 vs 17 ms per CPU training step at batch
        # 128); the parameters are nn.Conv's.
        x = conv_pool.ConvPool(6, 5, activation=activation, pool=pool, dtype=self.dtype, kernel_init=kinit,
                               name=common.STEM_CONV_NAME)(x)  # C1 (28x28x6) + S2: 14x14x6
        self.sow("intermediates", "stage1", x)
        x = conv_pool.ConvPool(16, 5, activation=activation, pool=pool, dtype=self.dtype, kernel_init=kinit,
                               name="conv2")(x)  # C3 (10x10x16) + S4: 5x5x16
        self.sow("intermediates", "stage2", x)
        x = x.reshape((x.shape[0], -1))  # 400
        x = act(common.dense(120, dtype=self.dtype, name="c5")(x))
        x = act(common.dense(84, dtype=self.dtype, name="f6")(x))
        x = common.dense(self.num_classes, dtype=self.dtype, name="output")(x)
        return common.classifier_output(x)
