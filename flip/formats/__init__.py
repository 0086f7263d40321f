"""Weights of other codebases in and out: open_clip / OpenAI CLIP state dicts, the released FLIP
(t5x) checkpoints, and a model-hub folder (safetensors + config + tokenizer files)."""
