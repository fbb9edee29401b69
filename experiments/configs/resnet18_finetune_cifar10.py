"""ResNet-18 fine-tuned on CIFAR-10 from ImageNet weights (torchvision's, converted).

    python -m cnnlab.models.torch_weights convert --model=resnet18 --torch_file=resnet18-f37072fd.pth \
        --out=$HOME/.cache/cnnlab/weights/resnet18.npz
    python -m experiments.main --config=experiments/configs/resnet18_finetune_cifar10.py \
        --workdir=/tmp/cnnlab/resnet18_finetune_cifar10

``resnet18-f37072fd.pth`` is torchvision's ``ResNet18_Weights.IMAGENET1K_V1`` file (fetch it where the network
allows; nothing here downloads). ``:weights=PATH`` (or ``--config.init_from=PATH``) names another converted file
or a cnnlab workdir; ``:freeze=backbone`` trains the new 10-class head only (a linear probe, BN statistics frozen),
``:freeze=batch_stats`` trains everything but keeps the ImageNet BN statistics.

Recipe: the ImageNet architecture unchanged (7x7/2 stem and max-pool, as the weights expect), its 1000-class head
replaced by a fresh 10-class one, SGD momentum 0.9 (Nesterov), lr 0.01 with a cosine decay over 15 epochs, weight
decay 5e-4, batch 128, crop + flip augmentation (at 32x32), the data's own per-channel normalisation. The images
are upsampled on the device to 224x224 (``config.image_resize``, bilinear, after the augmentation), the size the
ImageNet weights were trained at; ``:size=N`` picks another (``size=32``: no resize, 49 times cheaper, but the stem
then reduces the images to 8x8 before the first stage).
Expected with ImageNet weights: not measured here (neither CIFAR-10 nor the ImageNet weights can be had on the
development machine). For orientation, fine-tuned ImageNet ResNet-18s are commonly reported near 95% on CIFAR-10
with inputs upsampled to 224x224; compare with the same recipe without weights (``--config.init_from=''``) to see
what they bring. About 5.5 GFLOP per training image at 224x224: a GPU run.

``:runlocal`` checks the plumbing on sklearn's digits (bundled, 8x8 grey, zero-padded to 32x32, upsampled to
64x64): the converted
weights load (the log prints the replaced head and the first convolution summed over its three input channels
for the one-channel images), 40 steps of batch 32 run, and the test loss and accuracy are written. Its accuracy
says little about the weights (40 steps; with randomly initialised torchvision weights, converted,
it reached 49% test accuracy on the 359 test digits: 94 s of training and 35 s of compiling on 2 loaded cores).
"""

import os

from experiments.configs import common

DEFAULT_WEIGHTS = os.path.join("~", ".cache", "cnnlab", "weights", "resnet18.npz")


def finetune_config(dataset: str, arg, *, config_name: str, num_epochs: int, image_size: int, resize: int):
    """The fine-tuning recipe shared by the resnet18_finetune_* configs (see the docstrings)."""
    args = common.parse_arg(arg, flags=("runlocal", "bf16"), options={"weights": str, "freeze": str, "size": int},
                            config=config_name)
    c = common.base_config()
    c.dataset = dataset
    c.model = "resnet18"
    c.image_size = image_size
    size = args.options.get("size", resize)
    c.image_resize = 0 if size <= max(image_size, 32) else size  # no resize at (or below) the padded size
    c.init_from = os.path.expanduser(args.options.get("weights", DEFAULT_WEIGHTS))
    c.init_freeze = args.options.get("freeze", "none")
    c.num_epochs = num_epochs
    c.batch_size = 128
    c.optimizer = "sgd"
    c.learning_rate = 0.01
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    c.augment = True
    c.augment_pad = 4
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    if "bf16" in args:
        c.dtype = "bfloat16"
    if "runlocal" in args:
        c.dataset = "digits"
        c.image_size = 32
        c.image_resize = 64
        c.augment_pad = 2
        c.augment_flip = False  # mirrored digits are other symbols
        c.eval_batch_size = 359
        common.apply_runlocal(c, num_train_steps=40, batch_size=32)
    return c


def get_config(arg=None):
    return finetune_config("cifar10", arg, config_name="resnet18_finetune_cifar10.py", num_epochs=15, image_size=0,
                           resize=224)
