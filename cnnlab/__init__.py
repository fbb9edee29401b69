"""cnnlab: image classification in JAX/Flax, from descriptors and exact kNN to CNNs, on one data layer."""

__version__ = "0.1.0"
