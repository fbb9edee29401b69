"""ResNets (He, Zhang, Ren, Sun 2016, "Deep residual learning for image recognition").

ImageNet models (``ResNet``), layer for layer as torchvision defines them (v1.5: the stride of a bottleneck
block sits on its 3x3 convolution): stem conv 7x7/2 (64, no bias) - BN - ReLU - max-pool 3x3/2 (padding 1),
four stages of basic (18, 34) or bottleneck (50, 101, 152) blocks with 64/128/256/512 base widths, the first
block of stages 2-4 striding by 2 with a 1x1 conv + BN projection shortcut (also wherever the width changes),
global average pooling, dense classifier. Every spatial step pads, so any input of at least 1x1 runs
(224 -> 112 -> 56 -> 28 -> 14 -> 7; 32 -> 16 -> 8 -> 8 -> 4 -> 2 -> 1).
``small_input=True`` replaces the stem by a 3x3/1 convolution without max-pooling (the usual CIFAR
adaptation), so 32x32 inputs keep 32 -> 16 -> 8 -> 4 resolution through the four stages.

CIFAR models (``CifarResNet``, section 4.2 of the paper): conv 3x3 (16) - BN - ReLU, three stages of n basic
blocks with 16/32/64 channels (the first block of stages 2 and 3 strides by 2), global average pooling, dense
classifier; depth 6n + 2 (resnet20: n = 3 ... resnet110: n = 18). Shortcuts are identities; where the shape
changes, option A of the paper: subsample by 2 (x[:, ::2, ::2]) and zero-pad the new channels (no
parameters). ``shortcut="B"`` uses 1x1 conv + BN projections there instead.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnlab.models import common, winograd


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BN; projection shortcut (1x1 conv + BN) when shape changes."""

    features: int
    strides: int = 1
    dtype: Any = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        residual = x
        y = common.conv(self.features, 3, stride=self.strides, padding=1, use_bias=False, dtype=self.dtype,
                        name="conv1")(x)
        y = nn.relu(common.batch_norm(train, self.dtype, name="bn1")(y))
        y = common.conv(self.features, 3, padding=1, use_bias=False, dtype=self.dtype, name="conv2")(y)
        # Zero-initialising the last BN scale is a torchvision option (off by default); keep the default ones.
        y = common.batch_norm(train, self.dtype, name="bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            residual = common.conv(self.features, 1, stride=self.strides, use_bias=False, dtype=self.dtype,
                                   name="downsample_conv")(x)
            residual = common.batch_norm(train, self.dtype, name="downsample_bn")(residual)
        return nn.relu(y + residual)


class BottleneckBlock(nn.Module):
    """1x1 (width) - 3x3 (width, stride) - 1x1 (4 * width), each with BN; projection shortcut when needed."""

    features: int
    strides: int = 1
    dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        residual = x
        out_features = self.features * self.expansion
        y = common.conv(self.features, 1, use_bias=False, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(common.batch_norm(train, self.dtype, name="bn1")(y))
        y = common.conv(self.features, 3, stride=self.strides, padding=1, use_bias=False, dtype=self.dtype,
                        name="conv2")(y)
        y = nn.relu(common.batch_norm(train, self.dtype, name="bn2")(y))
        y = common.conv(out_features, 1, use_bias=False, dtype=self.dtype, name="conv3")(y)
        y = common.batch_norm(train, self.dtype, name="bn3")(y)
        if self.strides != 1 or x.shape[-1] != out_features:
            residual = common.conv(out_features, 1, stride=self.strides, use_bias=False, dtype=self.dtype,
                                   name="downsample_conv")(x)
            residual = common.batch_norm(train, self.dtype, name="downsample_bn")(residual)
        return nn.relu(y + residual)


class ResNet(nn.Module):
    """ImageNet-style ResNet: [batch, H, W, C] float images -> float32 logits [batch, num_classes].

    Attributes:
      num_classes: outputs.
      stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
      block_cls: BasicBlock or BottleneckBlock.
      num_filters: base width of stage 1 (64); stage i has num_filters * 2**(i-1).
      small_input: 3x3/1 stem without max-pool instead of 7x7/2 + max-pool (for 28x28 / 32x32 images).
      input_channels: if set, the channel count the stem requires (checked); None accepts any at init.
      dtype: computation dtype; parameters are float32.
    """

    num_classes: int
    stage_sizes: Sequence[int]
    block_cls: Any
    num_filters: int = 64
    small_input: bool = False
    input_channels: int | None = None
    dtype: Any = jnp.float32

    @property
    def min_size(self) -> int:
        return 1  # every convolution and pooling pads: a 1x1 image stays 1x1 throughout

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = common.checked_input(self, x, model_name="ResNet", min_size=self.min_size,
                                 input_channels=self.input_channels)
        if self.small_input:
            x = common.conv(self.num_filters, 3, padding=1, use_bias=False, dtype=self.dtype,
                            name=common.STEM_CONV_NAME)(x)
            x = nn.relu(common.batch_norm(train, self.dtype, name="stem_bn")(x))
        else:
            x = common.conv(self.num_filters, 7, stride=2, padding=3, use_bias=False, dtype=self.dtype,
                            name=common.STEM_CONV_NAME)(x)
            x = nn.relu(common.batch_norm(train, self.dtype, name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = self.block_cls(self.num_filters * 2**i, strides=strides, dtype=self.dtype,
                                   name=f"stage{i + 1}_block{j + 1}")(x, train)
            self.sow("intermediates", f"stage{i + 1}", x)
        x = jnp.mean(x, axis=(1, 2))
        x = common.dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return common.classifier_output(x)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=BottleneckBlock)
# Test-only: the same code paths (bottleneck, projections, strides) at a tiny size.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1), block_cls=BottleneckBlock, num_filters=4)


class CifarBasicBlock(nn.Module):
    """He et al. 2016 section 4.2 block: two 3x3 conv + BN; option-A (zero-pad) or option-B shortcut.

    ``conv_impl`` "xla": NHWC arrays and ``nn.Conv``. "winograd": channel-major [C, H, W, N] arrays in and out
    and ``winograd.WinogradConv`` for the 3x3 convolutions (option-B's 1x1 projections stay ``lax`` convolutions);
    same parameters either way.
    """

    features: int
    strides: int = 1
    shortcut: str = "A"
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        channel_major = self.conv_impl == "winograd"
        channel_axis = 0 if channel_major else -1
        conv3x3 = functools.partial(_conv3x3, self.conv_impl, dtype=self.dtype)
        batch_norm = functools.partial(common.batch_norm, train, self.dtype, axis=channel_axis)
        y = conv3x3(self.features, self.strides, name="conv1")(x)
        y = nn.relu(batch_norm(name="bn1")(y))
        y = conv3x3(self.features, 1, name="conv2")(y)
        y = batch_norm(name="bn2")(y)
        residual = x
        in_features = x.shape[channel_axis]
        if self.strides != 1 or in_features != self.features:
            if self.shortcut == "A":
                # Parameter-free: take every stride-th pixel (what a 1x1 stride-2 identity conv sees) and
                # zero-pad the extra channels, split evenly before and after as in the reference code.
                extra = self.features - in_features
                if channel_major:
                    residual = x[:, :: self.strides, :: self.strides, :]
                    residual = jnp.pad(residual, ((extra // 2, extra - extra // 2), (0, 0), (0, 0), (0, 0)))
                else:
                    residual = x[:, :: self.strides, :: self.strides, :]
                    residual = jnp.pad(residual, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
            else:
                projection = common.conv(self.features, 1, stride=self.strides, use_bias=False, dtype=self.dtype,
                                         name="downsample_conv",
                                         conv_impl="xla" if channel_major else self.conv_impl)
                residual = (winograd.to_channel_major(projection(winograd.to_nhwc(x))) if channel_major
                            else projection(x))
                residual = batch_norm(name="downsample_bn")(residual)
        return nn.relu(y + residual)


CONV_IMPLS = ("auto", "onednn", "xla", "winograd")


def _conv3x3(conv_impl: str, features: int, stride: int, *, dtype: Any, name: str) -> nn.Module:
    """A 3x3, padding 1, bias-free convolution module named ``name``: ``nn.Conv`` (NHWC) or Winograd (CHWN)."""
    if conv_impl == "winograd":
        return winograd.WinogradConv(features, strides=stride, layout="CHWN", dtype=dtype,
                                     kernel_init=common.conv_kernel_init, name=name)
    return common.conv(features, 3, stride=stride, padding=1, use_bias=False, dtype=dtype, name=name,
                       conv_impl=conv_impl)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6 * blocks_per_stage + 2: [batch, H, W, C] -> float32 logits [batch, classes].

    Attributes:
      num_classes: outputs.
      blocks_per_stage: n (3 for ResNet-20 ... 18 for ResNet-110).
      widths: channels of the three stages (16, 32, 64).
      shortcut: "A" (identity + zero padding, no parameters; the paper's CIFAR choice) or "B" (projections).
      conv_impl: "xla" (``nn.Conv`` on NHWC arrays) or "winograd" (``cnnlab.models.winograd``: the network runs
        on channel-major [C, H, W, N] arrays and its 3x3 convolutions are Winograd F(4x4, 3x3) batched matrix
        products; the stride-2 ones take every other output). Same parameters, outputs within float rounding.
      input_channels: if set, the channel count the stem requires (checked); None accepts any at init.
      dtype: computation dtype; parameters are float32.
    """

    num_classes: int
    blocks_per_stage: int
    widths: Sequence[int] = (16, 32, 64)
    shortcut: str = "A"
    conv_impl: str = "auto"
    input_channels: int | None = None
    dtype: Any = jnp.float32

    @property
    def min_size(self) -> int:
        return 1  # padded 3x3 convolutions and ::2 subsampling keep at least one pixel

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.shortcut not in ("A", "B"):
            raise ValueError(f"CifarResNet: shortcut must be 'A' or 'B', got {self.shortcut!r}.")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"CifarResNet: conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}.")
        x = common.checked_input(self, x, model_name="CifarResNet", min_size=self.min_size,
                                 input_channels=self.input_channels)
        channel_major = self.conv_impl == "winograd"
        if channel_major:
            # Channel-major from here to the pooling: one transpose of the small input instead of layout
            # changes around every convolution and its gradients.
            x = winograd.to_channel_major(x)
        channel_axis = 0 if channel_major else -1
        x = _conv3x3(self.conv_impl, self.widths[0], 1, dtype=self.dtype, name=common.STEM_CONV_NAME)(x)
        x = nn.relu(common.batch_norm(train, self.dtype, axis=channel_axis, name="stem_bn")(x))
        for i, width in enumerate(self.widths):
            for j in range(self.blocks_per_stage):
                strides = 2 if i > 0 and j == 0 else 1
                x = CifarBasicBlock(width, strides=strides, shortcut=self.shortcut, conv_impl=self.conv_impl,
                                    dtype=self.dtype, name=f"stage{i + 1}_block{j + 1}")(x, train)
            self.sow("intermediates", f"stage{i + 1}", winograd.to_nhwc(x) if channel_major else x)
        x = jnp.mean(x, axis=(1, 2)).T if channel_major else jnp.mean(x, axis=(1, 2))
        x = common.dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return common.classifier_output(x)


ResNet20 = functools.partial(CifarResNet, blocks_per_stage=3)
ResNet32 = functools.partial(CifarResNet, blocks_per_stage=5)
ResNet44 = functools.partial(CifarResNet, blocks_per_stage=7)
ResNet56 = functools.partial(CifarResNet, blocks_per_stage=9)
ResNet110 = functools.partial(CifarResNet, blocks_per_stage=18)
