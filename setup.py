"""FLIP: masked language-image pretraining in JAX/Flax."""

import setuptools

setuptools.setup(
    name="flip",
    version="0.1.0",
    description="FLIP (Scaling Language-Image Pre-training via Masking) in JAX/Flax",
    packages=setuptools.find_packages(include=["flip", "flip.*"]),
    package_data={"flip.data": ["vocab_bert_base_uncased.txt"]},
    python_requires=">=3.10",
    install_requires=[
        "absl-py", "clu", "einops", "etils", "flax", "jax", "ml_collections", "numpy", "optax",
        "orbax-checkpoint", "pillow", "tensorboard", "tensorflow", "tensorflow-datasets",
        "tensorflow-text",
    ],
)
