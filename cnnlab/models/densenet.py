"""DenseNets (Huang, Liu, van der Maaten, Weinberger 2017, "Densely connected convolutional networks").

ImageNet models (``DenseNet``), as torchvision defines them: stem conv 7x7/2 (64, no bias) - BN - ReLU -
max-pool 3x3/2 (padding 1); four dense blocks of (6, 12, 24, 16) [121], (6, 12, 32, 32) [169] or
(6, 12, 48, 32) [201] bottleneck layers with growth rate 32 (BN - ReLU - conv 1x1 (4 * 32) - BN - ReLU -
conv 3x3 (32), output concatenated to the input); transitions BN - ReLU - conv 1x1 (half the channels) -
average pool 2x2/2; final BN - ReLU - global average pool - dense. The three unpadded 2x2 transition pools need
a map of at least 8x8 after the stem (which divides by 4): smallest input 29x29 (torchvision's min_size),
so 28x28 is rejected unless ``small_input=True``, which replaces the stem by a 3x3/1 convolution without
max-pooling (smallest input 8x8; 32 -> 16 -> 8 -> 4 through the blocks).

CIFAR model ``densenet_bc_100_12`` (DenseNet-BC of section 3 / Table 2 of the paper, depth L = 100, growth
k = 12): conv 3x3 (2k = 24 channels, no bias), three dense blocks of (L - 4) / 6 = 16 bottleneck layers
(BN - ReLU - conv 1x1 (4k) - BN - ReLU - conv 3x3 (k)), transitions with compression 0.5 (BN - ReLU - conv 1x1 -
average pool 2x2/2) between them, final BN - ReLU - global average pool - dense. Channels: 24 -> 216 -> 108 ->
300 -> 150 -> 342. Smallest input 4x4 (two unpadded pools).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnlab.models import common


class DenseLayer(nn.Module):
    """BN - ReLU - conv 1x1 (bn_size * growth) - BN - ReLU - conv 3x3 (growth); returns the new features."""

    growth_rate: int
    bn_size: int = 4
    dropout_rate: float = 0.0
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = functools.partial(common.conv, use_bias=False, dtype=self.dtype, conv_impl=self.conv_impl)
        y = nn.relu(common.batch_norm(train, self.dtype, name="norm1")(x))
        y = conv(self.bn_size * self.growth_rate, 1, name="conv1")(y)
        y = nn.relu(common.batch_norm(train, self.dtype, name="norm2")(y))
        y = conv(self.growth_rate, 3, padding=1, name="conv2")(y)
        if self.dropout_rate > 0:
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        return y


class Transition(nn.Module):
    """BN - ReLU - conv 1x1 (features) - average pool 2x2/2."""

    features: int
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.relu(common.batch_norm(train, self.dtype, name="norm")(x))
        x = common.conv(self.features, 1, use_bias=False, dtype=self.dtype, name="conv", conv_impl=self.conv_impl)(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
    """DenseNet(-BC): [batch, H, W, C] float images -> float32 logits [batch, num_classes].

    Attributes:
      num_classes: outputs.
      block_config: layers per dense block, e.g. (6, 12, 24, 16) for DenseNet-121.
      growth_rate: k, channels each layer adds.
      num_init_features: stem output channels (64 for ImageNet, 2k for DenseNet-BC on CIFAR).
      bn_size: bottleneck width multiplier (4: the 1x1 conv outputs 4k channels).
      compression: transition output = floor(compression * channels) (0.5).
      cifar_stem: 3x3/1 stem convolution without max-pool (the CIFAR architecture).
      small_input: for the ImageNet models: use the CIFAR stem so 28x28 / 32x32 inputs keep resolution.
      dropout_rate: dropout after each 3x3 convolution in training (0 in torchvision and here by default).
      conv_impl: "auto" (oneDNN's convolutions on a single CPU device where ``cnnlab.native`` is built, ``lax``
        elsewhere), "onednn" or "xla"; see ``common.conv``. Same parameters and values either way.
      input_channels: if set, the channel count the stem requires (checked); None accepts any at init.
      dtype: computation dtype; parameters are float32.
    """

    num_classes: int
    block_config: Sequence[int]
    growth_rate: int = 32
    num_init_features: int = 64
    bn_size: int = 4
    compression: float = 0.5
    cifar_stem: bool = False
    small_input: bool = False
    dropout_rate: float = 0.0
    conv_impl: str = "auto"
    input_channels: int | None = None
    dtype: Any = jnp.float32

    @property
    def min_size(self) -> int:
        pools = len(self.block_config) - 1
        # the ImageNet stem (7x7/2 conv then 3x3/2 pool, both padded) maps H to ceil(ceil(H/2)/2) >= 2**pools
        return 2**pools if (self.cifar_stem or self.small_input) else 4 * (2**pools - 1) + 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = common.checked_input(self, x, model_name="DenseNet", min_size=self.min_size,
                                 input_channels=self.input_channels,
                                 too_small_hint="" if (self.cifar_stem or self.small_input) else
                                 "Build it with small_input=True for 28x28 or 32x32 images.")
        if self.cifar_stem or self.small_input:
            x = common.conv(self.num_init_features, 3, padding=1, use_bias=False, dtype=self.dtype,
                            name=common.STEM_CONV_NAME, conv_impl=self.conv_impl)(x)
            if not self.cifar_stem:  # the ImageNet models keep their stem BN - ReLU with the small stem
                x = nn.relu(common.batch_norm(train, self.dtype, name="stem_bn")(x))
        else:
            x = common.conv(self.num_init_features, 7, stride=2, padding=3, use_bias=False, dtype=self.dtype,
                            name=common.STEM_CONV_NAME, conv_impl=self.conv_impl)(x)
            x = nn.relu(common.batch_norm(train, self.dtype, name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        features = self.num_init_features
        for i, num_layers in enumerate(self.block_config):
            for j in range(num_layers):
                y = DenseLayer(self.growth_rate, self.bn_size, self.dropout_rate, conv_impl=self.conv_impl,
                               dtype=self.dtype, name=f"block{i + 1}_layer{j + 1}")(x, train)
                x = jnp.concatenate([x, y], axis=-1)
            features += num_layers * self.growth_rate
            self.sow("intermediates", f"stage{i + 1}", x)
            if i != len(self.block_config) - 1:
                features = int(features * self.compression)
                x = Transition(features, conv_impl=self.conv_impl, dtype=self.dtype,
                               name=f"transition{i + 1}")(x, train)
        x = nn.relu(common.batch_norm(train, self.dtype, name="final_norm")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = common.dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        return common.classifier_output(x)


DenseNet121 = functools.partial(DenseNet, block_config=(6, 12, 24, 16))
DenseNet169 = functools.partial(DenseNet, block_config=(6, 12, 32, 32))
DenseNet201 = functools.partial(DenseNet, block_config=(6, 12, 48, 32))
DenseNetBC100k12 = functools.partial(DenseNet, block_config=(16, 16, 16), growth_rate=12, num_init_features=24,
                                     cifar_stem=True)
# Test-only: the same code paths at a tiny size.
DenseNetTiny = functools.partial(DenseNet, block_config=(2, 2), growth_rate=4, num_init_features=8, cifar_stem=True)
