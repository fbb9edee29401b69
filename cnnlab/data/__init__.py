"""cnnlab's data layer: official raw files -> TFDS prepared data (no TensorFlow) -> numpy -> device batches.

    from cnnlab import data
    data.names()                                   # ["cifar10", "cifar100", "digits", "fashion_mnist", "mnist"]
    ds = data.load("fashion_mnist", "train[:90%]") # ds.images uint8 [N, H, W, C], ds.labels int32 [N]
    data.info("mnist").mean                        # per-channel train mean in [0, 1] units

Submodules: formats (raw readers), builders (TFDS builders), loading (load/info/prepare),
pipeline (shuffling, batching, sharding, on-device preprocessing). `python -m cnnlab.data` lists datasets.
"""

from cnnlab.data.loading import (Dataset, DatasetInfo, Status, info, is_prepared, load, names, prepare,
                                 status)

__all__ = ["Dataset", "DatasetInfo", "Status", "info", "is_prepared", "load", "names", "prepare", "status"]
