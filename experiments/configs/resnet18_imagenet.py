"""ResNet-18 on ImageNet (ILSVRC2012) with the Goyal et al. 2017 recipe of resnet50_imagenet.py (same commands,
arguments and data; see its docstring): SGD momentum 0.9, lr 0.1 x batch / 256 with 5 warm-up epochs, / 10 at
epochs 30, 60, 80 of 90, weight decay 1e-4, label smoothing 0.1, bfloat16.

    python -m experiments.main --config=experiments/configs/resnet18_imagenet.py --workdir=runs/resnet18_imagenet
    python -m experiments.main --config=experiments/configs/resnet18_imagenet.py:runlocal --workdir=/tmp/r18_local

Expected: about 70-71 % top-1 on the validation split (torchvision's ResNet-18 reaches 69.8 % with its 90-epoch
step recipe without label smoothing). It computes about 1.8 GFLOP per 224 x 224 image, 2.3 times less than
ResNet-50, so the host must decode about 2.3 times as many images per second per accelerator.
"""

from experiments.configs import resnet50_imagenet


def get_config(arg=None):
    return resnet50_imagenet.goyal2017_imagenet("resnet18", arg, config="resnet18_imagenet.py")
