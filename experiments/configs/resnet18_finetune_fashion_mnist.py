"""ResNet-18 fine-tuned on Fashion-MNIST from ImageNet weights (torchvision's, converted).

    python -m cnnlab.models.torch_weights convert --model=resnet18 --torch_file=resnet18-f37072fd.pth \
        --out=$HOME/.cache/cnnlab/weights/resnet18.npz
    python -m experiments.main --config=experiments/configs/resnet18_finetune_fashion_mnist.py \
        --workdir=/tmp/cnnlab/resnet18_finetune_fmnist

The recipe of resnet18_finetune_cifar10.py (same arguments: ``:weights=PATH``, ``:freeze=backbone|batch_stats``,
``:bf16``, ``:runlocal``, ``:size=N``), on Fashion-MNIST's 28x28 grey images zero-padded to 32x32, upsampled on
the device to 128x128 (``config.image_resize``; 224 costs three times more), and 10 epochs. The images have
one channel: the ImageNet first convolution is summed over its three input channels when the weights are loaded
(the same response as the 3-channel model on the grey image copied into three channels), as the log says.
Expected with ImageNet weights: not measured (no ImageNet weights here; about 1.8 GFLOP per training image at
128x128, a GPU run);
compare with the same recipe without weights (``--config.init_from=''``) and with resnet18_fashion_mnist.py (the
small-input stem from scratch, about 95%).

``:runlocal`` checks the plumbing on sklearn's digits exactly as resnet18_finetune_cifar10.py's does.
"""

from experiments.configs.resnet18_finetune_cifar10 import finetune_config


def get_config(arg=None):
    return finetune_config("fashion_mnist", arg, config_name="resnet18_finetune_fashion_mnist.py", num_epochs=10,
                           image_size=32, resize=128)
