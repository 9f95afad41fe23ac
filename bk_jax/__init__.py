"""bk_jax: ResNet-BK (Birman-Schwinger) long-context language models in JAX."""

__version__ = "0.1.0"
