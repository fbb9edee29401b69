"""AlexNet (Krizhevsky, Sutskever, Hinton 2012), as torchvision defines it, and a small-image variant.

``AlexNet`` (torchvision's single-tower "one weird trick" version, 61,100,840 parameters for 1000 classes):
  conv 11x11/4 pad 2 (64) - ReLU - max-pool 3/2 - conv 5x5 pad 2 (192) - ReLU - max-pool 3/2
  - conv 3x3 (384) - ReLU - conv 3x3 (256) - ReLU - conv 3x3 (256) - ReLU - max-pool 3/2
  - adaptive average pool to 6x6 - dropout 0.5 - dense 4096 - ReLU - dropout 0.5 - dense 4096 - ReLU - dense.
224 -> 55 -> 27 -> 27 -> 13 -> 13 -> 6. Smallest input: 63x63 (torchvision's published min_size too): the
stride-4 stem and three unpadded 3/2 pools leave nothing of smaller images. 28x28 and 32x32 images are rejected
with that message: use ``alexnet_cifar``.

``AlexNetSmall`` (registered as ``alexnet_cifar``; cnnlab's own small-image adaptation, not a published model):
the same five convolutions with the same widths (64, 192, 384, 256, 256) but all 3x3 with padding 1 and
stride 1, 2x2/2 max-pools after conv 1, conv 2 and conv 5 (32 -> 16 -> 8 -> 4), adaptive average pool to
4x4 (an identity at 32x32), then dropout 0.5 - dense 1024 - ReLU - dropout 0.5 - dense 1024 - ReLU - dense.
Accepts any input of at least 8x8 (28x28 -> 14 -> 7 -> 3, pooled up to 4x4). 7,506,762 parameters for
3-channel input and 10 classes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnlab.models import common


class AlexNet(nn.Module):
    """torchvision's AlexNet: [batch, H>=63, W>=63, C] -> float32 logits [batch, num_classes].

    Attributes:
      num_classes: outputs.
      dropout_rate: dropout before the two hidden dense layers (training only).
      input_channels: if set, the channel count the stem requires (checked); None accepts any at init.
      dtype: computation dtype; parameters are float32.
    """

    num_classes: int
    dropout_rate: float = 0.5
    input_channels: int | None = None
    dtype: Any = jnp.float32

    @property
    def min_size(self) -> int:
        return 63

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = common.checked_input(self, x, model_name="alexnet", min_size=self.min_size,
                                 input_channels=self.input_channels,
                                 too_small_hint="For 28x28 or 32x32 images use alexnet_cifar.")
        c = lambda f, k, s, p, name: common.conv(f, k, stride=s, padding=p, dtype=self.dtype, name=name)
        pool = lambda y: nn.max_pool(y, (3, 3), strides=(2, 2))
        x = pool(nn.relu(c(64, 11, 4, 2, common.STEM_CONV_NAME)(x)))
        self.sow("intermediates", "stage1", x)
        x = pool(nn.relu(c(192, 5, 1, 2, "conv2")(x)))
        self.sow("intermediates", "stage2", x)
        x = nn.relu(c(384, 3, 1, 1, "conv3")(x))
        x = nn.relu(c(256, 3, 1, 1, "conv4")(x))
        x = pool(nn.relu(c(256, 3, 1, 1, "conv5")(x)))
        self.sow("intermediates", "stage3", x)
        x = common.adaptive_avg_pool(x, (6, 6))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(common.dense(4096, dtype=self.dtype, name="fc1")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(common.dense(4096, dtype=self.dtype, name="fc2")(x))
        x = common.dense(self.num_classes, dtype=self.dtype, name="fc3")(x)
        return common.classifier_output(x)


class AlexNetSmall(nn.Module):
    """AlexNet layout for 32x32 images (see the module docstring): [batch, H>=8, W>=8, C] -> logits.

    Attributes:
      num_classes: outputs.
      hidden_units: width of the two hidden dense layers (1024).
      dropout_rate: dropout before the two hidden dense layers (training only).
      input_channels: if set, the channel count the stem requires (checked); None accepts any at init.
      dtype: computation dtype; parameters are float32.
    """

    num_classes: int
    hidden_units: int = 1024
    dropout_rate: float = 0.5
    input_channels: int | None = None
    dtype: Any = jnp.float32

    @property
    def min_size(self) -> int:
        return 8  # three unpadded 2x2/2 pools

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = common.checked_input(self, x, model_name="alexnet_cifar", min_size=self.min_size,
                                 input_channels=self.input_channels)
        c = lambda f, name: common.conv(f, 3, padding=1, dtype=self.dtype, name=name)
        pool = lambda y: nn.max_pool(y, (2, 2), strides=(2, 2))
        x = pool(nn.relu(c(64, common.STEM_CONV_NAME)(x)))
        self.sow("intermediates", "stage1", x)
        x = pool(nn.relu(c(192, "conv2")(x)))
        self.sow("intermediates", "stage2", x)
        x = nn.relu(c(384, "conv3")(x))
        x = nn.relu(c(256, "conv4")(x))
        x = pool(nn.relu(c(256, "conv5")(x)))
        self.sow("intermediates", "stage3", x)
        x = common.adaptive_avg_pool(x, (4, 4))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(common.dense(self.hidden_units, dtype=self.dtype, name="fc1")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(common.dense(self.hidden_units, dtype=self.dtype, name="fc2")(x))
        x = common.dense(self.num_classes, dtype=self.dtype, name="fc3")(x)
        return common.classifier_output(x)
