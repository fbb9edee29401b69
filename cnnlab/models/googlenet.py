"""GoogLeNet / Inception v1 (Szegedy et al. 2015, "Going deeper with convolutions"), as torchvision defines it.

Every convolution is torchvision's BasicConv2d: conv (no bias) - BN (eps 0.001) - ReLU.
Stem: conv 7x7/2 (64) - max-pool 3/2 - conv 1x1 (64) - conv 3x3 (192) - max-pool 3/2; inception 3a, 3b -
max-pool 3/2 - 4a ... 4e - max-pool 2/2 - 5a, 5b - global average pool - dropout 0.2 - dense. All max-pools use
PyTorch's ceil_mode=True (224 -> 112 -> 56 -> 28 -> 14 -> 7).
An inception module concatenates four branches: 1x1; 1x1 reduce - 3x3; 1x1 reduce - "5x5"; 3x3/1 max-pool -
1x1 projection. torchvision's "5x5" branch uses a 3x3 kernel (a known quirk kept for its pretrained weights);
``branch5x5_kernel`` defaults to 3 so that the parameter count equals torchvision's 6,624,904 (1000 classes);
``branch5x5_kernel=5`` gives the paper's 5x5 convolutions.
Auxiliary classifiers (``aux_logits=True``, after 4a and 4d): adaptive average pool to 4x4 - BasicConv2d 1x1
(128) - dense 1024 - ReLU - dropout 0.7 - dense. Their parameters exist whenever aux_logits is True (13,004,888
in all for 1000 classes), and ``model.apply(..., train=True)`` then returns (logits, aux1, aux2); in evaluation,
or with aux_logits False (the default), it returns logits only.
Smallest input: 15x15 (torchvision's min_size; the ceil-mode pools keep a 1x1 map). ``small_input=True``
replaces the 7x7/2 stem convolution with a 3x3/1 one and drops the first max-pool (32 -> 32 -> 16 -> 8 -> 4;
smallest input 4x4).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnlab.models import common

BN_EPSILON = 1e-3  # torchvision's BasicConv2d


class BasicConv(nn.Module):
    """conv (no bias) - BN (eps 0.001) - ReLU."""

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dtype: Any = jnp.float32
    conv_name: str = "conv"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = common.conv(self.features, self.kernel, stride=self.stride, padding=self.padding, use_bias=False,
                        dtype=self.dtype, name=self.conv_name)(x)
        return nn.relu(common.batch_norm(train, self.dtype, epsilon=BN_EPSILON, name="bn")(x))


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: out = ch1x1 + ch3x3 + ch5x5 + pool_proj."""

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int
    branch5x5_kernel: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b1 = BasicConv(self.ch1x1, 1, dtype=self.dtype, name="branch1")(x, train)
        b2 = BasicConv(self.ch3x3red, 1, dtype=self.dtype, name="branch2_reduce")(x, train)
        b2 = BasicConv(self.ch3x3, 3, padding=1, dtype=self.dtype, name="branch2")(b2, train)
        b3 = BasicConv(self.ch5x5red, 1, dtype=self.dtype, name="branch3_reduce")(x, train)
        k = self.branch5x5_kernel
        b3 = BasicConv(self.ch5x5, k, padding=k // 2, dtype=self.dtype, name="branch3")(b3, train)
        b4 = common.max_pool_ceil(x, 3, 1, padding=1)
        b4 = BasicConv(self.pool_proj, 1, dtype=self.dtype, name="branch4")(b4, train)
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionAux(nn.Module):
    """Auxiliary head: adaptive avg pool 4x4 - BasicConv 1x1 (128) - dense 1024 - ReLU - dropout 0.7 - dense."""

    num_classes: int
    dropout_rate: float = 0.7
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = common.adaptive_avg_pool(x, (4, 4))
        x = BasicConv(128, 1, dtype=self.dtype, name="conv")(x, train)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(common.dense(1024, dtype=self.dtype, name="fc1")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return common.classifier_output(common.dense(self.num_classes, dtype=self.dtype, name="fc2")(x))


# (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj), Table 1 of the paper / torchvision.
INCEPTION_CONFIGS = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


class GoogLeNet(nn.Module):
    """Inception v1: [batch, H, W, C] float images -> float32 logits [batch, num_classes]
    (or (logits, aux1, aux2) when aux_logits and train).

    Attributes:
      num_classes: outputs.
      aux_logits: build the two auxiliary classifiers and return their logits in training.
      branch5x5_kernel: kernel of the "5x5" branch (3 as torchvision, 5 as the paper).
      small_input: 3x3/1 stem convolution without the first max-pool, for 28x28 / 32x32 images.
      dropout_rate: dropout before the classifier (0.2, training only).
      input_channels: if set, the channel count the stem requires (checked); None accepts any at init.
      dtype: computation dtype; parameters are float32.
    """

    num_classes: int
    aux_logits: bool = False
    branch5x5_kernel: int = 3
    small_input: bool = False
    dropout_rate: float = 0.2
    input_channels: int | None = None
    dtype: Any = jnp.float32

    @property
    def min_size(self) -> int:
        # ceil-mode pools 3/2, 3/2, 3/2, 2/2 leave >= 1 pixel from 8x8 after the stem conv (and from 4x4 when the
        # first pool is dropped); the 7x7/2 stem maps 15 -> 8 and 14 -> 7 (torchvision's min_size is 15).
        return 4 if self.small_input else 15

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        if self.branch5x5_kernel not in (3, 5):
            raise ValueError(f"googlenet: branch5x5_kernel must be 3 or 5, got {self.branch5x5_kernel}.")
        x = common.checked_input(self, x, model_name="googlenet", min_size=self.min_size,
                                 input_channels=self.input_channels, stem_path=("conv1", common.STEM_CONV_NAME),
                                 too_small_hint="" if self.small_input else
                                 "Build it with small_input=True for smaller images (down to 4x4).")
        inception = lambda name: Inception(*INCEPTION_CONFIGS[name], branch5x5_kernel=self.branch5x5_kernel,
                                           dtype=self.dtype, name=f"inception{name}")
        if self.small_input:
            x = BasicConv(64, 3, padding=1, dtype=self.dtype, conv_name=common.STEM_CONV_NAME, name="conv1")(x, train)
        else:
            x = BasicConv(64, 7, stride=2, padding=3, dtype=self.dtype, conv_name=common.STEM_CONV_NAME,
                          name="conv1")(x, train)
            x = common.max_pool_ceil(x, 3, 2)
        x = BasicConv(64, 1, dtype=self.dtype, name="conv2")(x, train)
        x = BasicConv(192, 3, padding=1, dtype=self.dtype, name="conv3")(x, train)
        x = common.max_pool_ceil(x, 3, 2)
        self.sow("intermediates", "stage1", x)
        x = inception("3a")(x, train)
        x = inception("3b")(x, train)
        self.sow("intermediates", "stage2", x)
        x = common.max_pool_ceil(x, 3, 2)
        x = inception("4a")(x, train)
        # Aux heads are built at init whenever aux_logits is set, so that variables initialised with
        # train=False can be trained with train=True.
        make_aux = self.aux_logits and (train or self.is_initializing())
        aux1 = InceptionAux(self.num_classes, dtype=self.dtype, name="aux1")(x, train) if make_aux else None
        x = inception("4b")(x, train)
        x = inception("4c")(x, train)
        x = inception("4d")(x, train)
        aux2 = InceptionAux(self.num_classes, dtype=self.dtype, name="aux2")(x, train) if make_aux else None
        x = inception("4e")(x, train)
        self.sow("intermediates", "stage3", x)
        x = common.max_pool_ceil(x, 2, 2)
        x = inception("5a")(x, train)
        x = inception("5b")(x, train)
        self.sow("intermediates", "stage4", x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = common.classifier_output(common.dense(self.num_classes, dtype=self.dtype, name="fc")(x))
        if self.aux_logits and train:
            return logits, aux1, aux2
        return logits
