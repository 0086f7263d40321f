"""FLIP: masked language-image pretraining in JAX/Flax."""
