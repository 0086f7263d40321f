"""open_clip's ViT CLIP models (OpenAI CLIP's too): model configs and state dicts, in and out.

An open_clip model config (the JSON of open_clip's `model_configs/`, e.g. ViT-B-16.json) is the
same model as these config.model options (`apply`):
  image: class token, learned position embedding (with a class slot), LayerNorm before the
    blocks (ln_pre), patch embedding without bias, class-token pooling after the last LayerNorm
    (ln_post), OpenAI's pixel mean/std;
  text: causal attention, no padding mask, pooling at the end-of-text token (the highest id),
    context 77, CLIP's byte-level BPE tokenizer;
  both: LayerNorm eps 1e-5, GELU (exact) or QuickGELU ("quick_gelu": true, the OpenAI models).
`to_params` maps a state dict (open_clip's names, PyTorch layouts) onto this codebase's
parameters and `from_params` back, checking every name and shape; `read_state_dict` reads the
files open_clip's hub downloads and `create_model_and_transforms(..., pretrained=...)` cache
(.safetensors, .bin/.pt/.pth; the latter need PyTorch).
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

import ml_collections
import numpy as np

from flip import errors
from flip.formats import safetensors

# open_clip's model configs (open_clip/model_configs/*.json, v3.3.0) for the ViT CLIP models it
# ships weights for; any other config of this form can be given as a JSON file.
_B32 = dict(embed_dim=512, vision_cfg=dict(image_size=224, layers=12, width=768, patch_size=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12))
_B16 = dict(_B32, vision_cfg=dict(_B32["vision_cfg"], patch_size=16))
_L14 = dict(embed_dim=768,
            vision_cfg=dict(image_size=224, layers=24, width=1024, patch_size=14),
            text_cfg=dict(context_length=77, vocab_size=49408, width=768, heads=12, layers=12))
_H14 = dict(embed_dim=1024,
            vision_cfg=dict(image_size=224, layers=32, width=1280, head_width=80, patch_size=14),
            text_cfg=dict(context_length=77, vocab_size=49408, width=1024, heads=16, layers=24))
_G14 = dict(embed_dim=1024,
            vision_cfg=dict(image_size=224, layers=40, width=1408, head_width=88,
                            mlp_ratio=4.3637, patch_size=14),
            text_cfg=dict(context_length=77, vocab_size=49408, width=1024, heads=16, layers=24))
_BIGG14 = dict(embed_dim=1280,
               vision_cfg=dict(image_size=224, layers=48, width=1664, head_width=104,
                               mlp_ratio=4.9231, patch_size=14),
               text_cfg=dict(context_length=77, vocab_size=49408, width=1280, heads=20,
                             layers=32))


def _at(cfg: dict, image_size: int) -> dict:
  return dict(cfg, vision_cfg=dict(cfg["vision_cfg"], image_size=image_size))


MODEL_CONFIGS: dict[str, dict] = {
    "ViT-B-32": _B32, "ViT-B-32-256": _at(_B32, 256), "ViT-B-16": _B16,
    "ViT-L-14": _L14, "ViT-L-14-336": _at(_L14, 336),
    "ViT-H-14": _H14, "ViT-H-14-378": _at(_H14, 378),
    "ViT-g-14": _G14, "ViT-bigG-14": _BIGG14,
}
MODEL_CONFIGS.update({f"{name}-quickgelu": dict(cfg, quick_gelu=True)
                      for name, cfg in list(MODEL_CONFIGS.items())})

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which open_clip uses

# Fields of an open_clip model config this mapping reads; any other field with a value other
# than open_clip's default is an architecture it does not reproduce.
_VISION_DEFAULTS = dict(image_size=224, layers=12, width=768, head_width=64, mlp_ratio=4.0,
                        patch_size=16, ls_init_value=None, patch_dropout=0.0,
                        attentional_pool=False, no_ln_pre=False, pos_embed_type="learnable",
                        final_ln_after_pool=False, pool_type="tok", output_tokens=False,
                        timm_model_name=None, act_kwargs=None, norm_kwargs=None,
                        block_type=None, qk_norm=False, scaled_cosine_attn=False,
                        scale_heads=False, scale_attn_inner=False, scale_attn=False,
                        scale_fc=False)
_TEXT_DEFAULTS = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12,
                      mlp_ratio=4.0, ls_init_value=None, hf_tokenizer_name=None,
                      tokenizer_kwargs=None, hf_model_name=None, embed_cls=False,
                      pad_id=0, no_causal_mask=False, final_ln_after_pool=False,
                      pool_type="argmax", proj_bias=False, proj_type="linear",
                      output_tokens=False, act_kwargs=None, norm_kwargs=None,
                      block_type=None, qk_norm=False, scaled_cosine_attn=False,
                      scale_heads=False, scale_attn_inner=False, scale_attn=False,
                      scale_fc=False)
_TOP_DEFAULTS = dict(embed_dim=512, quick_gelu=False, vision_cfg=None, text_cfg=None,
                     custom_text=False, cast_dtype=None, init_logit_scale=None,
                     init_logit_bias=None, nonscalar_logit_scale=False)
_IGNORED = {"custom_text", "cast_dtype", "init_logit_scale"}  # naming and init only


def model_config(model: str) -> dict:
  """An open_clip model config: a name of MODEL_CONFIGS or a JSON file (a model config, or an
  open_clip_config.json with "model_cfg")."""
  if model in MODEL_CONFIGS:
    return copy.deepcopy(MODEL_CONFIGS[model])
  if model.endswith(".json") or os.path.sep in model:
    if not os.path.exists(model):
      raise errors.NotFoundError(f"open_clip model config {model} not found.")
    try:
      with open(model) as f:
        cfg = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise errors.DataError(f"{model} is not an open_clip model config (JSON): {e}.") from None
    cfg = cfg.get("model_cfg", cfg)
    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
      raise errors.DataError(f"{model} is not an open_clip model config: it needs "
                             "embed_dim, vision_cfg and text_cfg.")
    return cfg
  raise errors.ConfigError(
      f"Unknown open_clip model {model!r}: use one of {sorted(MODEL_CONFIGS)} or the path of "
      "its JSON model config (open_clip/model_configs/NAME.json).")


def _check_supported(cfg: dict) -> None:
  for section, defaults, where in ((cfg, _TOP_DEFAULTS, ""),
                                   (cfg["vision_cfg"], _VISION_DEFAULTS, "vision_cfg."),
                                   (cfg["text_cfg"], _TEXT_DEFAULTS, "text_cfg.")):
    for key, value in section.items():
      if key not in defaults:
        raise errors.ConfigError(f"open_clip model option {where}{key}={value!r} is not "
                                 "supported here (only the ViT CLIP models are).")
      if where and key in ("image_size", "layers", "width", "head_width", "mlp_ratio",
                           "patch_size", "context_length", "vocab_size", "heads"):
        continue
      if not where and key in {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"} | _IGNORED:
        continue
      if value != defaults[key] and not (value in (None, {}) and defaults[key] in (None, {})):
        raise errors.ConfigError(f"open_clip model option {where}{key}={value!r} is not "
                                 "supported here (only open_clip's default ViT CLIP "
                                 "architecture with these sizes is).")


def _vision(cfg: dict) -> dict:
  return dict(_VISION_DEFAULTS, **cfg["vision_cfg"])


def _text(cfg: dict) -> dict:
  return dict(_TEXT_DEFAULTS, **cfg["text_cfg"])


def _grid(v: dict) -> int:
  size, patch = v["image_size"], v["patch_size"]
  size = size[0] if isinstance(size, (list, tuple)) else size
  if size % patch:
    raise errors.ConfigError(f"open_clip image_size {size} is not a multiple of the patch size "
                             f"{patch}.")
  return size // patch


def apply(config: ml_collections.ConfigDict, cfg: dict) -> ml_collections.ConfigDict:
  """Sets config.model (and the input fields the model needs) to open_clip model config `cfg`."""
  _check_supported(cfg)
  v, t = _vision(cfg), _text(cfg)
  if v["width"] % v["head_width"]:
    raise errors.ConfigError(f"open_clip vision width {v['width']} is not a multiple of "
                             f"head_width {v['head_width']}.")
  m = config.model
  m.embed_dim = cfg["embed_dim"]
  m.act = "quick_gelu" if cfg.get("quick_gelu") else "gelu"
  m.ln_eps = LN_EPS
  m.image.update(dict(
      patch_size=v["patch_size"], depth=v["layers"], width=v["width"],
      num_heads=v["width"] // v["head_width"], mlp_ratio=float(v["mlp_ratio"]),
      class_token=True, posemb="learned", ln_pre=True, patch_bias=False, pool="cls",
      pixel_stats="openai"))
  m.text.update(dict(
      vocab_size=t["vocab_size"], depth=t["layers"], width=t["width"], num_heads=t["heads"],
      mlp_ratio=float(t["mlp_ratio"]), max_len=t["context_length"], causal=True,
      pad_mask=False, pool="eot"))
  config.input.image_size = _grid(v) * v["patch_size"]
  config.input.text_len = t["context_length"]
  config.input.tokenizer = "bpe"
  config.input.vocab_path = None
  return config


def expected_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
  """open_clip's state dict names -> shapes for model config `cfg`."""
  v, t = _vision(cfg), _text(cfg)
  out: dict[str, tuple[int, ...]] = {}

  def blocks(prefix, width, depth, mlp_ratio):
    mlp = int(width * mlp_ratio)
    for i in range(depth):
      b = f"{prefix}transformer.resblocks.{i}."
      out.update({
          b + "ln_1.weight": (width,), b + "ln_1.bias": (width,),
          b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
          b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,),
          b + "ln_2.weight": (width,), b + "ln_2.bias": (width,),
          b + "mlp.c_fc.weight": (mlp, width), b + "mlp.c_fc.bias": (mlp,),
          b + "mlp.c_proj.weight": (width, mlp), b + "mlp.c_proj.bias": (width,)})

  w, p, e = v["width"], v["patch_size"], cfg["embed_dim"]
  out.update({
      "visual.class_embedding": (w,), "visual.positional_embedding": (_grid(v) ** 2 + 1, w),
      "visual.proj": (w, e), "visual.conv1.weight": (w, 3, p, p),
      "visual.ln_pre.weight": (w,), "visual.ln_pre.bias": (w,),
      "visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,)})
  blocks("visual.", w, v["layers"], v["mlp_ratio"])
  tw = t["width"]
  out.update({
      "token_embedding.weight": (t["vocab_size"], tw),
      "positional_embedding": (t["context_length"], tw),
      "ln_final.weight": (tw,), "ln_final.bias": (tw,), "text_projection": (tw, e),
      "logit_scale": ()})
  blocks("", tw, t["layers"], t["mlp_ratio"])
  return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The tensors of an open_clip checkpoint file, float32 numpy, with open_clip's names.

  .safetensors is read directly; .bin/.pt/.pth (torch.save archives, training checkpoints with
  "state_dict", OpenAI's TorchScript files) need PyTorch. A "module." prefix (DDP) is dropped.
  """
  if not os.path.isfile(path):
    raise errors.NotFoundError(f"Checkpoint file {path} not found.")
  with open(path, "rb") as f:
    magic = f.read(4)
  if path.endswith(".safetensors"):
    state, _ = safetensors.read(path)
  elif magic[:2] == b"PK" or magic[:1] == b"\x80":  # a zip (torch.save) or a legacy pickle
    state = _read_torch(path)
  else:
    raise errors.DataError(f"{path} is neither a safetensors file nor a PyTorch checkpoint "
                           "(torch.save zip archive); pass the open_clip weights file "
                           "(open_clip_model.safetensors or open_clip_pytorch_model.bin).")
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  if any(k.startswith("text.") for k in state):  # open_clip's CustomTextCLIP naming
    state = {(k[len("text."):] if k.startswith("text.") else k): v for k, v in state.items()}
  for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):  # not weights
    state.pop(key, None)
  return state


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.ConfigError(
        f"Reading {path} needs PyTorch (pip install torch); or convert the file to "
        ".safetensors, which is read without it.") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    try:  # OpenAI's original files are TorchScript archives
      obj = torch.jit.load(path, map_location="cpu").state_dict()
    except Exception:  # pylint: disable=broad-except
      raise errors.DataError(f"{path} could not be read as a PyTorch checkpoint (truncated or "
                             f"not one): {str(e).splitlines()[0]}") from None
  if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict) or not all(hasattr(v, "numpy") for v in obj.values()):
    raise errors.DataError(f"{path} holds no state dict of tensors.")
  return {k: v.detach().float().numpy() for k, v in obj.items()}


def check_state_dict(state: dict[str, np.ndarray], cfg: dict, model: str) -> None:
  """Every name and shape of `state` is that of open_clip model `model` (config `cfg`)."""
  want = expected_shapes(cfg)
  missing = sorted(set(want) - set(state))
  unknown = sorted(set(state) - set(want))
  if missing or unknown:
    parts = []
    if missing:
      parts.append(f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''} "
                   f"({len(missing)} in all)")
    if unknown:
      parts.append(f"unknown {unknown[:4]}{' ...' if len(unknown) > 4 else ''} "
                   f"({len(unknown)} in all)")
    raise errors.CheckpointMismatchError(
        f"The checkpoint is not an open_clip {model} state dict: {'; '.join(parts)}. Check "
        "--model (e.g. ViT-B-16 vs ViT-B-32, -quickgelu for OpenAI weights).")
  wrong = [f"{key} has shape {tuple(np.shape(state[key]))} but open_clip {model} has {shape}"
           for key, shape in want.items() if tuple(np.shape(state[key])) != shape
           and not (key == "logit_scale" and int(np.size(state[key])) == 1)]
  if wrong:
    raise errors.CheckpointMismatchError(
        f"The checkpoint's {'; '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''} "
        f"({len(wrong)} in all): the file holds another model; check --model.")


def _linear(w: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(w, np.float32).T)


def _ln(state, key) -> dict:
  return {"scale": state[key + ".weight"], "bias": state[key + ".bias"]}


def _encoder_to_params(state, prefix, depth, heads, final_ln) -> dict:
  out = {}
  for i in range(depth):
    b = f"{prefix}transformer.resblocks.{i}."
    width = state[b + "ln_1.weight"].shape[0]
    hd = width // heads
    qkv_w = np.split(state[b + "attn.in_proj_weight"], 3, axis=0)
    qkv_b = np.split(state[b + "attn.in_proj_bias"], 3, axis=0)
    attn = {name: {"kernel": _linear(w).reshape(width, heads, hd), "bias": bias.reshape(heads, hd)}
            for name, w, bias in zip(("query", "key", "value"), qkv_w, qkv_b)}
    attn["out"] = {"kernel": _linear(state[b + "attn.out_proj.weight"]).reshape(heads, hd, width),
                   "bias": state[b + "attn.out_proj.bias"]}
    out[f"block{i:02d}"] = {
        "ln1": _ln(state, b + "ln_1"), "attn": attn, "ln2": _ln(state, b + "ln_2"),
        "mlp": {"fc1": {"kernel": _linear(state[b + "mlp.c_fc.weight"]),
                        "bias": state[b + "mlp.c_fc.bias"]},
                "fc2": {"kernel": _linear(state[b + "mlp.c_proj.weight"]),
                        "bias": state[b + "mlp.c_proj.bias"]}}}
  out["ln_final"] = _ln(state, final_ln)
  return out


def to_params(state: dict[str, np.ndarray], cfg: dict, model: str = "model") -> dict:
  """This codebase's parameters (unrolled blocks, numpy float32) of an open_clip state dict."""
  check_state_dict(state, cfg, model)
  state = {k: np.asarray(v, np.float32) for k, v in state.items()}
  v, t = _vision(cfg), _text(cfg)
  conv = state["visual.conv1.weight"]  # [width, 3, p, p] -> [(p1 p2 c), width]
  image = {
      "patch_embed": {"kernel": np.ascontiguousarray(
          conv.transpose(2, 3, 1, 0).reshape(-1, conv.shape[0]))},
      "cls_token": state["visual.class_embedding"],
      "pos_embed": state["visual.positional_embedding"],
      "ln_pre": _ln(state, "visual.ln_pre"),
      "encoder": _encoder_to_params(state, "visual.", v["layers"],
                                    v["width"] // v["head_width"], "visual.ln_post"),
  }
  text = {
      "token_embed": {"embedding": state["token_embedding.weight"]},
      "pos_embed": state["positional_embedding"],
      "encoder": _encoder_to_params(state, "", t["layers"], t["heads"], "ln_final"),
  }
  return {"image": image, "text": text,
          "image_proj": {"kernel": state["visual.proj"]},
          "text_proj": {"kernel": state["text_projection"]},
          "logit_scale": state["logit_scale"].reshape(())}


def _encoder_from_params(enc: dict, prefix: str, final_ln: str, out: dict) -> None:
  depth = len([k for k in enc if k.startswith("block")])
  for i in range(depth):
    blk, b = enc[f"block{i:02d}"], f"{prefix}transformer.resblocks.{i}."
    attn = blk["attn"]
    width = attn["query"]["kernel"].shape[0]
    out[b + "attn.in_proj_weight"] = np.concatenate(
        [_linear(attn[n]["kernel"].reshape(width, -1)) for n in ("query", "key", "value")])
    out[b + "attn.in_proj_bias"] = np.concatenate(
        [attn[n]["bias"].reshape(-1) for n in ("query", "key", "value")])
    out[b + "attn.out_proj.weight"] = _linear(attn["out"]["kernel"].reshape(-1, width))
    out[b + "attn.out_proj.bias"] = attn["out"]["bias"]
    for ln, name in (("ln1", "ln_1"), ("ln2", "ln_2")):
      out[b + name + ".weight"], out[b + name + ".bias"] = blk[ln]["scale"], blk[ln]["bias"]
    out[b + "mlp.c_fc.weight"] = _linear(blk["mlp"]["fc1"]["kernel"])
    out[b + "mlp.c_fc.bias"] = blk["mlp"]["fc1"]["bias"]
    out[b + "mlp.c_proj.weight"] = _linear(blk["mlp"]["fc2"]["kernel"])
    out[b + "mlp.c_proj.bias"] = blk["mlp"]["fc2"]["bias"]
  out[final_ln + ".weight"] = enc["ln_final"]["scale"]
  out[final_ln + ".bias"] = enc["ln_final"]["bias"]


def from_params(params: dict, cfg: dict) -> dict[str, np.ndarray]:
  """The open_clip state dict (float32 numpy) of this codebase's parameters (unrolled blocks)
  of a model that `apply(config, cfg)` describes; the inverse of to_params."""
  params = _numpy(params)
  image, text = params["image"], params["text"]
  kernel = image["patch_embed"]["kernel"]  # [(p1 p2 c), width]
  p = int(math.isqrt(kernel.shape[0] // 3))
  out = {
      "visual.conv1.weight": np.ascontiguousarray(
          kernel.reshape(p, p, 3, -1).transpose(3, 2, 0, 1)),
      "visual.class_embedding": image["cls_token"],
      "visual.positional_embedding": image["pos_embed"],
      "visual.ln_pre.weight": image["ln_pre"]["scale"],
      "visual.ln_pre.bias": image["ln_pre"]["bias"],
      "visual.proj": params["image_proj"]["kernel"],
      "token_embedding.weight": text["token_embed"]["embedding"],
      "positional_embedding": text["pos_embed"],
      "text_projection": params["text_proj"]["kernel"],
      "logit_scale": np.asarray(params["logit_scale"], np.float32).reshape(()),
  }
  _encoder_from_params(image["encoder"], "visual.", "visual.ln_post", out)
  _encoder_from_params(text["encoder"], "", "ln_final", out)
  out = {k: np.asarray(x, np.float32).copy(order="C") for k, x in out.items()}
  check_state_dict(out, cfg, "export")
  return out


def _numpy(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


# The config.model values of an open_clip ViT; anything else is not expressible in open_clip.
_FIXED = {
    "ln_eps": LN_EPS,
    "image.class_token": True, "image.posemb": "learned", "image.ln_pre": True,
    "image.patch_bias": False, "image.pool": "cls", "image.pixel_stats": "openai",
    "text.causal": True, "text.pad_mask": False, "text.pool": "eot",
}
_WHY = {
    "image.class_token": "open_clip's ViT always has a class token that every patch attends to",
    "image.pool": "open_clip pools the image tower's class token ('tok') or the patches "
                  "without it ('avg'), not the mean over all tokens",
    "image.posemb": "open_clip's position embedding includes a class slot",
    "image.patch_bias": "open_clip's patch embedding (conv1) has no bias",
    "image.ln_pre": "open_clip's ViT has a LayerNorm before the blocks (ln_pre)",
    "text.pool": "open_clip's text tower pools one token (argmax/first/last), not the mean "
                 "over the non-padding tokens",
    "text.causal": "open_clip's CLIP text tower is causal",
    "text.pad_mask": "open_clip's causal text tower has no padding mask",
    "ln_eps": "open_clip's LayerNorm has eps 1e-5",
    "image.pixel_stats": "open_clip's CLIP models take OpenAI's pixel mean/std",
}


def config_of(config: ml_collections.ConfigDict) -> dict:
  """The open_clip model config of a resolved config; errors.ConfigError naming every part of
  the architecture that open_clip cannot express."""
  m = config.model
  problems = []
  for path, want in _FIXED.items():
    value = m
    for part in path.split("."):
      value = value[part]
    if value != want:
      problems.append(f"model.{path}={value!r} ({_WHY[path]})")
  if config.input.tokenizer != "bpe":
    problems.append(f"input.tokenizer={config.input.tokenizer!r} (open_clip's CLIP models take "
                    "CLIP's BPE tokenizer)")
  if m.image.width % m.image.num_heads:
    problems.append("model.image.width is not a multiple of num_heads")
  if problems:
    raise errors.ConfigError(
        "open_clip cannot express this model: " + "; ".join(problems) + ". Export it with "
        "--format=safetensors instead (read by flip.inference.FLIPModel.load).")
  cfg = tower_sizes(config)
  if m.act == "quick_gelu":
    cfg["quick_gelu"] = True
  elif m.act != "gelu":
    raise errors.ConfigError(f"open_clip cannot express model.act={m.act!r}: it has GELU and "
                             "QuickGELU.")
  return cfg


def tower_sizes(config: ml_collections.ConfigDict) -> dict:
  """The sizes of a resolved config's towers as open_clip model config fields (embed_dim and
  the sizes in vision_cfg and text_cfg), whatever else its architecture is."""
  m = config.model
  return {
      "embed_dim": int(m.embed_dim),
      "vision_cfg": {"image_size": int(config.input.image_size), "layers": int(m.image.depth),
                     "width": int(m.image.width),
                     "head_width": int(m.image.width // m.image.num_heads),
                     "mlp_ratio": float(m.image.mlp_ratio),
                     "patch_size": int(m.image.patch_size)},
      "text_cfg": {"context_length": int(m.text.max_len), "vocab_size": int(m.text.vocab_size),
                   "width": int(m.text.width), "heads": int(m.text.num_heads),
                   "layers": int(m.text.depth), "mlp_ratio": float(m.text.mlp_ratio)},
  }


def preprocess_config(config: ml_collections.ConfigDict) -> dict:
  """open_clip's preprocess_cfg for the model: its size, pixel statistics and resize."""
  return {"size": int(config.input.image_size), "mode": "RGB", "mean": list(OPENAI_MEAN),
          "std": list(OPENAI_STD), "interpolation": "bicubic", "resize_mode": "shortest",
          "fill_color": 0}
