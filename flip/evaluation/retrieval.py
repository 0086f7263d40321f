"""Image<->text retrieval recall@k with several captions per image (COCO/Flickr30k style)."""

from __future__ import annotations

import numpy as np

from flip.evaluation import data as data_lib
from flip.evaluation import embed
from flip.evaluation import metrics


class Retrieval:
  """text_retrieval_recall@k (image->text) and image_retrieval_recall@k (text->image).

  Options (defaults in flip.config_lib.EVALUATORS["retrieval"]): dataset (a TFDS name or
  `wds:<root>`, a CLIP_benchmark webdataset retrieval set), split, text_key ("captions"; e.g.
  "captions/text" for coco_captions; a webdataset set's captions are its .txt lines), image_key,
  data_dir, captions_per_image (extra ones are cut, empty ones dropped), max_examples, ks,
  mask_ratio (0: full images; >0: masked inference). Images are embedded chunk by chunk as the
  split streams; only the embeddings and the captions are kept.
  """

  def __init__(self, embedder: embed.Embedder, *, image_size: int, dataset: str, split: str,
               text_key: str, image_key: str, data_dir: str | None, captions_per_image: int,
               max_examples: int | None, ks: tuple[int, ...], mask_ratio: float):
    self.embedder = embedder
    self.ks = tuple(ks)
    self.mask_ratio = mask_ratio
    self.data = data_lib.open_split(dataset, split, data_dir, image_size, image_key=image_key,
                                    text_key=text_key, max_examples=max_examples,
                                    captions_per_image=captions_per_image)

  def __call__(self, params) -> dict[str, float]:
    image_emb, captions = [], []
    for chunk in self.data.chunks():
      image_emb.append(self.embedder.images(params, chunk["image"], self.mask_ratio))
      captions.append(chunk["captions"] if chunk["captions"].ndim == 2
                      else chunk["captions"][:, None])
    image_emb, captions = np.concatenate(image_emb), np.concatenate(captions)
    image_of = np.repeat(np.arange(len(image_emb)), captions.shape[1])
    keep = np.array([len(c.strip()) > 0 for c in captions.reshape(-1)])
    texts = [c.decode("utf-8") if isinstance(c, bytes) else str(c)
             for c in captions.reshape(-1)[keep]]
    return metrics.retrieval(image_emb, self.embedder.texts(params, texts), image_of[keep],
                             self.ks)
