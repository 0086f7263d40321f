"""Using a trained FLIP: load it, embed images and texts, classify zero-shot, search.

  from flip import inference
  model = inference.FLIPModel.load("/tmp/flip_demo")          # a training workdir or an export
  probs = model.zero_shot_classify(["cat.jpg", "dog.png"], ["cat", "dog"])
  image_emb = model.encode_images(list_of_paths)              # paths, PIL images or arrays
  indices, scores = model.search("a red circle", image_emb, k=5)

Images get the evaluation transform (short side resized to the model's resolution, bicubic, centre
crop, ImageNet mean/std); texts the training tokenizer. Everything runs jitted on JAX's default
device (CPU, GPU or TPU) in fixed-size batches. `export(workdir, path)` writes one portable
file (zip: params.msgpack, config.json, the tokenizer's vocabulary) that `FLIPModel.load` reads
without orbax, optax or any training code; it also reads a workdir of imported weights
(tools/import_weights.py) and a model-hub folder (tools/export.py --format=safetensors).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from flax import serialization

from flip import config_lib
from flip import errors
from flip import sharding
from flip.evaluation import prompts
from flip.models import flip as flip_lib

EXPORT_FORMAT = "flip-export-v1"


def workdir_config_and_params(workdir: str, step: int | None = None):
  """(resolved config, parameters) of a training or import workdir (newest checkpoint or
  `step`), on one device."""
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise errors.NotFoundError(f"{workdir} is not a FLIP training workdir (no config.json).")
  with open(os.path.join(workdir, "config.json")) as f:
    config = config_lib.resolve(config_lib.from_json(f.read()))
  return config, _workdir_params(workdir, config, step)


def _workdir_params(workdir: str, config: ml_collections.ConfigDict, step: int | None):
  from flip import checkpoint  # pylint: disable=g-import-not-at-top  (orbax: workdirs only)
  params, _ = checkpoint.load_params(
      workdir, flip_lib.abstract_params(config, sharding.one_device_mesh()), step)
  return params


class FLIPModel:
  """A trained FLIP model with its preprocessing; see the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict, params: Any,
               vocab_path: str | None = None, batch_size: int = 64):
    from flip.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
    config = config_lib.resolve(config)
    self.config = config
    self.model = flip_lib.from_config(config.model)
    self.params = jax.device_put(params)
    self.image_size = int(config.input.image_size)
    self.batch_size = batch_size
    self.tokenizer = tokenizer_lib.from_config(config.input, vocab_path)
    tokenizer_lib.check_vocab_size(self.tokenizer, config.model.text.vocab_size)
    apply = lambda method: jax.jit(lambda p, x: self.model.apply({"params": p}, x, method=method))  # noqa: E731
    self._image = apply(flip_lib.FLIP.encode_image)
    self._text = apply(flip_lib.FLIP.encode_text)
    self.logit_scale = float(np.exp(self.model.apply(
        {"params": self.params}, method=flip_lib.FLIP.logit_scale)))

  # ---- loading -------------------------------------------------------------------------------

  @classmethod
  def load(cls, path: str, step: int | None = None, **kwargs) -> "FLIPModel":
    """From a training or import workdir (its config.json and newest checkpoint, or `step`),
    a file written by `export` / tools/export.py, or a folder written by tools/export.py
    --format=safetensors."""
    path = os.fspath(path)
    if os.path.isfile(path):
      return cls._from_export(path, **kwargs)
    from flip.formats import hub  # pylint: disable=g-import-not-at-top
    if hub.is_hub(path):
      config, params, vocab = hub.read_hub(path)
      return cls(config, params, vocab_path=kwargs.pop("vocab_path", None) or vocab, **kwargs)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")):
      return cls(*workdir_config_and_params(path, step), **kwargs)
    raise errors.NotFoundError(
        f"{path} is neither a FLIP training workdir (a directory with config.json and "
        "checkpoints/), an exported model file nor an exported model folder (tools/export.py).")

  @classmethod
  def _from_export(cls, path: str, **kwargs) -> "FLIPModel":
    try:
      with zipfile.ZipFile(path) as z:
        meta = json.loads(z.read("format.json"))
        if meta.get("format") != EXPORT_FORMAT:
          raise errors.DataError(f"{path}: unknown export format {meta.get('format')!r}.")
        config = config_lib.from_json(z.read("config.json").decode("utf-8"))
        params = serialization.msgpack_restore(z.read("params.msgpack"))
        from flip.formats import hub  # pylint: disable=g-import-not-at-top
        vocab_name = next(n for n in hub.VOCAB_NAMES if n in z.namelist())
        vocab = z.read(vocab_name)
    except (zipfile.BadZipFile, KeyError, StopIteration) as e:
      raise errors.DataError(f"{path} is not a FLIP model export (tools/export.py): {e}") from None
    vocab_file = tempfile.NamedTemporaryFile("wb", suffix="." + vocab_name, delete=False)
    with vocab_file:
      vocab_file.write(vocab)
    return cls(config, params, vocab_path=vocab_file.name, **kwargs)

  # ---- inputs --------------------------------------------------------------------------------

  def _pixels(self, image, index: int) -> np.ndarray:
    """One image (path, PIL image or array) -> uint8/float RGB [h, w, 3] in 0..255."""
    if isinstance(image, (str, os.PathLike)):
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      try:
        with tf.io.gfile.GFile(os.fspath(image), "rb") as f:
          data = f.read()
        return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
      except (tf.errors.OpError, OSError) as e:
        raise errors.DataError(f"Cannot read image {image!r} (input {index}): "
                               f"{str(e).splitlines()[0]}") from None
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
      return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
      array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or min(array.shape[:2]) < 1:
      raise errors.DataError(f"Image {index} has shape {array.shape}: give [height, width, 3] "
                             "RGB (0..255), a PIL image or a file path.")
    return array[..., :3]

  def preprocess(self, images: Sequence[Any]) -> np.ndarray:
    """The evaluation transform: float32 [n, size, size, 3], normalised."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from flip.data import pipeline  # pylint: disable=g-import-not-at-top
    out = []
    for i, image in enumerate(images):
      pixels = tf.cast(tf.convert_to_tensor(self._pixels(image, i)), tf.float32)
      out.append(pipeline.normalize(pipeline.center_crop(pixels, self.image_size)).numpy())
    return np.stack(out).astype(np.float32)

  def _batched(self, fn, inputs: np.ndarray) -> np.ndarray:
    outputs = []
    for i in range(0, len(inputs), self.batch_size):
      chunk = inputs[i:i + self.batch_size]
      pad = self.batch_size - len(chunk)  # fixed batch shape: one compile
      padded = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      outputs.append(np.asarray(fn(self.params, padded))[:len(chunk)])
    return np.concatenate(outputs)

  # ---- the API -------------------------------------------------------------------------------

  def encode_images(self, images: Sequence[Any]) -> np.ndarray:
    """L2-normalised embeddings [n, embed_dim] of images (paths, PIL images or arrays)."""
    if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and
                                                  images.ndim == 3):
      images = [images]
    if len(images) == 0:
      raise ValueError("encode_images got no images.")
    return self._batched(self._image, self.preprocess(images))

  def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised embeddings [n, embed_dim] of strings (the training tokenizer)."""
    if isinstance(texts, str):
      texts = [texts]
    if len(texts) == 0:
      raise ValueError("encode_texts got no texts.")
    return self._batched(self._text, self.tokenizer(list(texts)))

  @staticmethod
  def similarity(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarities [n_images, n_texts] of embeddings from encode_images/encode_texts."""
    return np.asarray(image_embeddings) @ np.asarray(text_embeddings).T

  def class_embeddings(self, class_names: Sequence[str],
                       templates: str | Sequence[str] = "short") -> np.ndarray:
    """One embedding per class: the normalised mean of its prompts' embeddings (CLIP's)."""
    if isinstance(class_names, str) or len(class_names) == 0:
      raise ValueError("class_names must be a non-empty list of names, e.g. ['cat', 'dog'].")
    return prompts.class_embeddings(self.encode_texts, class_names, prompts.templates(templates))

  def zero_shot_classify(self, images, class_names: Sequence[str],
                         templates: str | Sequence[str] = "short") -> np.ndarray:
    """Class probabilities [n_images, n_classes]: softmax of the model's scaled similarities
    to prompt-ensembled class embeddings (templates: "short" = CLIP's 7, "clip80", or a list of
    strings with one '{}')."""
    classes = self.class_embeddings(class_names, templates)
    images = (np.asarray(images) if isinstance(images, np.ndarray) and images.ndim == 2
              else self.encode_images(images))
    logits = self.logit_scale * self.similarity(images, classes)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)

  def search(self, query, image_embeddings: np.ndarray, k: int = 5
             ) -> tuple[np.ndarray, np.ndarray]:
    """The k images most similar to a query: a text (str), an image (pathlib.Path, PIL image
    or array) or an embedding [d]. Returns (indices [k], cosine scores [k]), best first."""
    image_embeddings = np.asarray(image_embeddings)
    if image_embeddings.ndim != 2 or len(image_embeddings) == 0:
      raise ValueError("image_embeddings must be a non-empty [n, d] array from encode_images.")
    if isinstance(query, str):
      q = self.encode_texts([query])[0]
    elif isinstance(query, np.ndarray) and query.ndim == 1:
      q = query
    else:
      q = self.encode_images([query])[0]
    scores = image_embeddings @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]


def export(workdir: str, path: str, step: int | None = None) -> str:
  """Writes a training run's parameters (newest checkpoint, or `step`), config and vocabulary
  to one file that FLIPModel.load reads; returns `path`."""
  config, params = workdir_config_and_params(workdir, step)
  with open(os.path.join(workdir, "config.json")) as f:
    config_text = f.read()
  params = jax.tree.map(np.asarray, params)
  from flip.formats import hub  # pylint: disable=g-import-not-at-top
  vocab_path = hub.vocab_file(config)
  with open(vocab_path, "rb") as f:
    vocab = f.read()
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("format.json", json.dumps({"format": EXPORT_FORMAT, "step": step}))
    z.writestr("config.json", config_text)
    z.writestr("params.msgpack", serialization.msgpack_serialize(params))
    z.writestr(hub.vocab_name(config), vocab)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    f.write(buffer.getvalue())
  return path
