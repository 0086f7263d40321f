"""FLIP: masked language-image pretraining in JAX/Flax.

`pip install .` installs the package `flip` with its recipes (the repository's configs/, as the
package `flip.configs`) and the console scripts flip-train and flip-evaluate. The dependencies are
given as lower bounds so that an install next to a newer JAX (Colab, a CUDA or TPU install) keeps
it; requirements.txt pins the versions the tests ran with.
"""

import setuptools

setuptools.setup(
    name="flip",
    version="0.1.0",
    description="FLIP (Scaling Language-Image Pre-training via Masking) in JAX/Flax",
    license="Apache-2.0",
    packages=setuptools.find_packages(include=["flip", "flip.*"]) + ["flip.configs",
                                                                      "flip.configs.benchmarks"],
    package_dir={"flip.configs": "configs"},
    package_data={"flip.data": ["vocab_bert_base_uncased.txt", "bpe_simple_vocab_16e6.txt.gz",
                                "LICENSE_open_clip_bpe.txt"]},
    python_requires=">=3.10",
    install_requires=[
        "absl-py>=2.0",
        "clu>=0.0.12",
        "einops>=0.8",
        "etils>=1.7",
        "flax>=0.10.2",
        "ftfy>=6.0",  # CLIP's BPE tokenizer (flip/data/bpe.py)
        "jax>=0.5.0",
        "ml_collections>=1.0",
        "ml_dtypes>=0.4",  # bfloat16 tensors of safetensors files (a JAX dependency)
        "msgpack>=1.0",  # the released FLIP checkpoints' index (a flax dependency)
        "numpy>=1.26",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "pillow>=10.0",
        "regex>=2023.0",  # CLIP's BPE tokenizer
        "tensorboard>=2.15",  # clu's metric writers
        "tensorflow>=2.16",  # tf.data (CPU only: the project hides accelerators from it)
        "tensorflow-datasets>=4.9.7",
        "tensorflow-text>=2.16",
        "importlib_resources",  # tensorflow-datasets builds data sets with it, undeclared
    ],
    entry_points={"console_scripts": [
        "flip-train = flip.main:run",
        "flip-evaluate = flip.evaluate:run",
        "flip-benchmark = flip.benchmark_suite:run",
    ]},
)
