"""ResNet-56 on CIFAR-100 with He et al. 2016's CIFAR recipe (Sec. 4.2).

    python -m experiments.main --config=experiments/configs/resnet56_cifar100.py --workdir=/tmp/cnnlab/resnet56_cifar100

Recipe: SGD momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 32k and 48k iterations, stop at
64k iterations (~164 epochs), 4-pixel zero padding + random 32x32 crop + horizontal flip, per-channel
normalisation, option-A (identity/zero-padding) shortcuts. The paper reports CIFAR-10 only; with this recipe
ResNet-56 on CIFAR-100 is commonly reported at about 71-72% top-1 (expect >= 70%).
CIFAR cannot be downloaded on the development machine, so this run was not measured here: put the official
python-version archive's files in TFDS's manual dir and run ``python -m cnnlab.data prepare cifar100``.
A GPU is the realistic device (hours on 2 CPU cores). ``:runlocal`` trains 50 steps; ``:bf16`` computes in
bfloat16.
"""

from experiments.configs import common


def get_config(arg=None):
    return common.he2016_cifar_resnet("cifar100", "resnet56", arg)
