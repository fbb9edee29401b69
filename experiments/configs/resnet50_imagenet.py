"""ResNet-50 on ImageNet (ILSVRC2012): the standard recipe of Goyal et al. 2017, "Accurate, Large Minibatch SGD".

    # one machine, every local GPU (data parallel over the devices jax sees):
    python -m experiments.main --config=experiments/configs/resnet50_imagenet.py --workdir=runs/resnet50_imagenet
    # a cluster (SLURM, TPU pod, ...): the same command on every host, plus --config.multihost=True;
    # jax.distributed.initialize() reads the coordinator, process count and id from the environment
    srun python -m experiments.main --config=experiments/configs/resnet50_imagenet.py \\
        --workdir=/shared/runs/resnet50_imagenet --config.multihost=True
    # a laptop smoke run of this exact code path on demo_photos (made from installed data on first use):
    python -m experiments.main --config=experiments/configs/resnet50_imagenet.py:runlocal --workdir=/tmp/r50_local

Recipe: SGD with momentum 0.9, learning rate 0.1 x batch / 256 (0.4 at the default global batch of 1,024), linear
warm-up over the first 5 epochs, divided by 10 at epochs 30, 60 and 80, 90 epochs; weight decay 1e-4; label
smoothing 0.1; bfloat16 computation (parameters and optimizer state stay float32). Input: the streamed pipeline
(cnnlab/train/feeds.py): Inception random-resized crop to 224 x 224 + horizontal flip for training; shorter side
to 256 and the centre 224 x 224 for evaluation on the 50,000 validation images. Expected: about 76 % top-1 and 93 %
top-5 on the validation split (Goyal et al. report 76.3 % top-1 at batch 256 to 8k). ``--workdir`` must be on a
file system every host sees (checkpoints are written by all processes, the other files by process 0).

The data: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/imagenet2012/
and run ``python -m cnnlab.data prepare imagenet2012`` once (README: ImageNet). Host decoding: one host core
decodes about 180-300 training images per second (README gives the measured figure); a GPU training ResNet-50 at
~2,500 images/s needs about 10 such cores, so set ``--config.data_threads`` (threads per process) and
``--config.data_workers`` (worker processes) to use the host's cores.

Args (after the colon, comma-separated): ``runlocal`` (20 steps of batch 16 at 64 x 64 on demo_photos, float32:
checks that preparing, streaming, decoding, training, checkpointing and evaluating of the ImageNet path work on
this machine; its accuracy means nothing), ``batch=N`` (global batch; the learning rate follows), ``fp32``.
"""

from experiments.configs import common


def goyal2017_imagenet(model: str, arg=None, *, config: str):
    """The Goyal et al. 2017 ImageNet recipe for ``model`` (a zoo name); ``arg`` as in the module docstring."""
    args = common.parse_arg(arg, flags=("runlocal", "fp32"), options={"batch": int}, config=config)
    c = common.base_config()
    c.dataset = "imagenet2012"
    c.eval_split = "validation"
    c.model = model
    c.image_size = 224                     # streamed datasets: the crop size
    c.batch_size = int(args.options.get("batch", 1024))
    c.eval_batch_size = c.batch_size
    c.num_epochs = 90
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.learning_rate = 0.1 * c.batch_size / 256
    c.schedule = "step"
    c.warmup_epochs = 5.0
    c.lr_boundaries_epochs = (30, 60, 80)
    c.lr_decay_factor = 0.1
    c.weight_decay = 1e-4
    c.label_smoothing = 0.1
    c.augment = True                       # host side: random-resized crop + flip
    c.dtype = "float32" if "fp32" in args else "bfloat16"
    c.data_threads = 8
    c.data_workers = 0
    c.prefetch_batches = 4
    c.log_every_steps = 100
    c.checkpoint_every_steps = 1000
    c.steps_per_dispatch = 1
    if "runlocal" in args:
        c.dataset = "demo_photos"
        c.eval_split = "test"
        c.image_size = 64
        c.dtype = "float32"                # CPUs compute bfloat16 slower than float32
        c.learning_rate = 0.1 * 16 / 256
        c.warmup_epochs = 0.0
        c.schedule = "constant"
        c.data_threads = 2
        c.prefetch_batches = 2
        c.eval_batch_size = 64
        common.apply_runlocal(c, num_train_steps=20, batch_size=16)
        c.checkpoint_every_steps = 10
    return c


def get_config(arg=None):
    return goyal2017_imagenet("resnet50", arg, config="resnet50_imagenet.py")
