"""Evaluation metrics on embeddings: top-k accuracy, per-class recall, retrieval recall@k, ridge probe.

Ranks are exact and deterministic, also with tied scores: the rank of a candidate is the number
of candidates scoring strictly higher plus the number scoring the same with a lower index (what a
stable sort by descending score gives). A query is a hit at k if its (best) positive has rank < k.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from flip import errors

CHUNK_ELEMENTS = 1 << 24  # similarity entries computed at once (64 MiB of float32)


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Rank of scores[i, targets[i]] within row i (0 = best), ties broken by index."""
  rows = np.arange(len(scores))
  target = scores[rows, targets][:, None]
  columns = np.arange(scores.shape[1])[None]
  return ((scores > target) | ((scores == target) & (columns < targets[:, None]))).sum(axis=1)


def classification(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)
                   ) -> dict[str, float]:
  """acc{k} (top-k accuracy) and mean_per_class_recall (top-1 recall averaged over the classes
  present): CLIP_benchmark's names."""
  ranks = target_ranks(scores, labels)
  out = {f"acc{k}": float(np.mean(ranks < k)) for k in ks if k <= scores.shape[1]}
  hits = ranks == 0
  present = np.unique(labels)
  out["mean_per_class_recall"] = float(np.mean([hits[labels == c].mean() for c in present]))
  return out


def _chunks(num_rows: int, num_columns: int):
  step = max(1, CHUNK_ELEMENTS // max(1, num_columns))
  for start in range(0, num_rows, step):
    yield slice(start, min(start + step, num_rows))


def retrieval(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray,
              ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """Recall@k both ways; text_to_image[j] is the image that caption j describes. CLIP_benchmark's
  names: text_retrieval_recall@k (image->text) and image_retrieval_recall@k (text->image).

  Image->text: an image is a hit at k if any of its captions ranks < k among all captions.
  Text->image: a caption is a hit at k if its image ranks < k among all images. Similarities are
  computed a chunk of queries at a time, never as one images x captions matrix.
  """
  num_images, num_texts = len(image_emb), len(text_emb)
  i2t_rank = np.empty(num_images, np.int64)
  for rows in _chunks(num_images, num_texts):
    sims = image_emb[rows] @ text_emb.T  # [c, texts]
    positive = text_to_image[None, :] == np.arange(num_images)[rows][:, None]
    if not positive.any(axis=1).all():
      raise errors.DataError("Every image needs at least one caption for image->text retrieval.")
    best = np.where(positive, sims, -np.inf).max(axis=1)
    # The best positive's index: the first positive caption reaching the best score.
    best_index = np.argmax(positive & (sims == best[:, None]), axis=1)
    i2t_rank[rows] = target_ranks(sims, best_index)
  t2i_rank = np.empty(num_texts, np.int64)
  for rows in _chunks(num_texts, num_images):
    t2i_rank[rows] = target_ranks(text_emb[rows] @ image_emb.T, text_to_image[rows])
  out = {}
  for k in ks:
    out[f"image_retrieval_recall@{k}"] = float(np.mean(t2i_rank < k))
    out[f"text_retrieval_recall@{k}"] = float(np.mean(i2t_rank < k))
  return out


def ridge_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                num_classes: int, l2_regs: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
                seed: int = 0) -> dict[str, float]:
  """Linear probe by regularised least squares to +-1 class targets (closed form).

  Features are standardised with the training statistics; the L2 strength is chosen on a held-out
  fifth of the training set (when it has at least 2 examples per class), then the probe is refit
  on all of it. Returns test top-1 accuracy (acc1) and the chosen L2 strength.
  """
  mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6

  def features(x):
    x = (np.asarray(x, np.float64) - mean) / std
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)

  def fit(x, y, l2):
    targets = 2.0 * np.eye(num_classes)[y] - 1.0
    gram = x.T @ x + l2 * len(x) * np.eye(x.shape[1])
    return np.linalg.solve(gram, x.T @ targets)

  def accuracy(w, x, y):
    return float(np.mean(np.argmax(x @ w, axis=1) == y))

  x, y = features(train_x), np.asarray(train_y)
  if len(l2_regs) > 1 and len(y) >= 2 * num_classes:
    order = np.random.default_rng(seed).permutation(len(y))
    held = order[:max(1, len(y) // 5)]
    fit_rows = order[len(held):]
    scores = [accuracy(fit(x[fit_rows], y[fit_rows], l2), x[held], y[held]) for l2 in l2_regs]
    l2 = l2_regs[int(np.argmax(scores))]
  else:
    l2 = l2_regs[len(l2_regs) // 2]
  w = fit(x, y, l2)
  return {"acc1": accuracy(w, features(test_x), np.asarray(test_y)), "l2": float(l2)}


def few_shot_indices(labels: np.ndarray, shots: int, seed: int = 0) -> np.ndarray:
  """`shots` random examples of every class (fewer if a class has fewer), sorted."""
  rng = np.random.default_rng(seed)
  picked = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    picked.append(rng.choice(members, size=min(shots, len(members)), replace=False))
  return np.sort(np.concatenate(picked))
