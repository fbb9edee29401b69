"""One process of the localhost multi-host test (tests/train/test_multihost.py); not a test itself.

    JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \
    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
    python tests/train/_multihost_worker.py MODE OUT_JSON [WORKDIR CONFIG_JSON]

MODE ``collectives``: joins the run through ``parallel.maybe_initialize_distributed``, puts this process's rows of
one global batch on the 8-device mesh with ``put_host_batch``, sums the global array (a cross-process reduction) and
digests the training augmentation of the global batch (gathered from both processes).
MODE ``train``: ``train_and_evaluate`` of the tiny config (fields from CONFIG_JSON) in WORKDIR, recording the digest
of every batch this process fed and every file path it opened for writing, created, renamed or removed.
MODE ``stream``: the same for a config on a prepared image folder (streamed feed), recording each batch's digest.
Writes what it saw to OUT_JSON (outside WORKDIR).
"""

import hashlib
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
written_paths: set[str] = set()


def _record_writes(event: str, args: tuple) -> None:
    """Audit hook: the paths this process writes through Python (open for writing, mkdir, rename, remove)."""
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path, mode, flags = args[0], args[1], args[2]
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
        if writing:
            written_paths.add(os.path.abspath(os.fsdecode(path)))
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate") and args \
            and isinstance(args[0], (str, bytes, os.PathLike)):
        written_paths.add(os.path.abspath(os.fsdecode(args[0])))
    elif event == "os.rename" and len(args) >= 2 and isinstance(args[1], (str, bytes, os.PathLike)):
        written_paths.add(os.path.abspath(os.fsdecode(args[1])))


def batch_digest(batch: dict) -> str:
    """sha1 of a host batch's image, label and mask bytes: equal digests mean the same rows in the same order."""
    h = hashlib.sha1()
    for name in ("image", "label", "mask"):
        h.update(name.encode())
        h.update(batch[name].tobytes())
    return h.hexdigest()


def global_test_images() -> np.ndarray:
    """The collectives check's global batch: uint8 [16, 8, 8, 1], the same on every process."""
    return np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)


def augmented_digest(images, mesh) -> str:
    """sha1 of the training preprocessing (pad to 28x28, random crop + flip with a fixed key) of a global batch."""
    import jax
    from jax.experimental import multihost_utils

    from cnnlab import parallel
    from cnnlab.train import steps as steps_lib

    def preprocess(key, x):
        return steps_lib.preprocess(x, key, mean=(0.5,), std=(0.25,), augment=True, image_size=(28, 28))

    out = jax.jit(preprocess, out_shardings=parallel.batch_sharded(mesh))(jax.random.key(3), images)
    out = multihost_utils.process_allgather(out, tiled=True) if jax.process_count() > 1 else out
    return hashlib.sha1(np.asarray(out).tobytes()).hexdigest()


def collectives(out_path: str) -> None:
    import jax

    from cnnlab import parallel

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    initialized = parallel.maybe_initialize_distributed()
    mesh = parallel.make_data_mesh()
    index, count = jax.process_index(), jax.process_count()
    rows = 16 // count  # this process's rows of the global batch: [index * rows, (index + 1) * rows)
    images = global_test_images()[index * rows:(index + 1) * rows]
    row_ids = np.arange(index * rows, (index + 1) * rows, dtype=np.float32)
    batch = parallel.put_host_batch({"image": images, "row": row_ids}, mesh)
    total = jax.jit(lambda x: x.sum(), out_shardings=parallel.replicated(mesh))(batch["row"])
    local_rows = sorted(float(v) for shard in batch["row"].addressable_shards for v in np.asarray(shard.data))
    placed_rows = sorted(r for shard in batch["row"].addressable_shards
                         for r in range(16)[shard.index[0]])  # global rows on this process's devices
    with open(out_path, "w") as f:
        json.dump({"initialized": initialized, "process_index": index, "process_count": count,
                   "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
                   "global_shape": list(batch["image"].shape), "local_rows": local_rows,
                   "placed_rows": placed_rows, "total": float(total),
                   "augmented_digest": augmented_digest(batch["image"], mesh)}, f)


def train(out_path: str, workdir: str, config_json: str) -> None:
    sys.addaudithook(_record_writes)
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from _train_helpers import tiny_config

    from cnnlab.data import pipeline
    from cnnlab.jobs import train_and_evaluate

    fed = []  # one entry per epoch_batches call: its arguments and the digest of every batch it yielded
    original = pipeline.epoch_batches

    def recording_epoch_batches(images, labels, **kwargs):
        call = {k: kwargs.get(k) for k in ("batch_size", "seed", "epoch", "shuffle", "drop_remainder",
                                           "start_batch")}
        call["digests"] = []
        fed.append(call)
        for batch in original(images, labels, **kwargs):
            call["digests"].append(batch_digest(batch))
            yield batch

    pipeline.epoch_batches = recording_epoch_batches
    with open(config_json) as f:
        config = tiny_config(**json.load(f))
    results = train_and_evaluate(config, workdir)
    with open(out_path, "w") as f:  # recorded before this write: the hook stays on, the path is outside workdir
        json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
                   "device_count": jax.device_count(), "results_test": results and results["test"], "fed": fed,
                   "written": sorted(written_paths)}, f)


def stream(out_path: str, workdir: str, config_json: str) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from _train_helpers import tiny_config

    from cnnlab.jobs import train_and_evaluate
    from cnnlab.train import feeds

    fed = []  # one entry per epoch of batches: ("train", epoch, start_batch) or ("eval",), and the digests

    def recording(method, kind):
        def wrapper(self, *args, **kwargs):
            call = {"kind": kind, "args": list(args), "digests": []}
            fed.append(call)
            for batch in method(self, *args, **kwargs):
                call["digests"].append(batch_digest(batch))
                yield batch
        return wrapper

    feeds.StreamingFeed.train_batches = recording(feeds.StreamingFeed.train_batches, "train")
    feeds.StreamingFeed.eval_batches = recording(feeds.StreamingFeed.eval_batches, "eval")
    with open(config_json) as f:
        config = tiny_config(**json.load(f))
    results = train_and_evaluate(config, workdir)
    with open(out_path, "w") as f:
        json.dump({"process_index": jax.process_index(), "results_test": results and results["test"], "fed": fed}, f)


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "collectives":
        collectives(out)
    elif mode == "train":
        train(out, sys.argv[3], sys.argv[4])
    elif mode == "stream":
        stream(out, sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown mode {mode!r}: use 'collectives', 'train' or 'stream'")
