"""Evaluation metrics against hand-computed answers: ties, several captions per image, chunking."""

import numpy as np
import pytest

from flip.evaluation import metrics


def test_classification_topk_and_mean_per_class_recall_by_hand():
  scores = np.array([
      [0.9, 0.1, 0.0],   # label 0: rank 0
      [0.5, 0.5, 0.2],   # label 1: tied with class 0, which has the lower index -> rank 1
      [0.5, 0.5, 0.2],   # label 0: tied, lower index wins -> rank 0
      [0.1, 0.2, 0.3],   # label 0: rank 2
  ])
  labels = np.array([0, 1, 0, 0])
  np.testing.assert_array_equal(metrics.target_ranks(scores, labels), [0, 1, 0, 2])
  out = metrics.classification(scores, labels, ks=(1, 2, 5))
  assert out["acc1"] == 0.5 and out["acc2"] == 0.75
  assert "acc5" not in out  # more than the 3 classes
  # class 0: 2 of 3 right; class 1: 0 of 1 -> (2/3 + 0) / 2
  assert out["mean_per_class_recall"] == pytest.approx(1 / 3)


def toy_retrieval():
  """3 images, 5 captions: image 0 has captions 0 and 1, image 1 has 2, image 2 has 3 and 4."""
  images = np.eye(3)
  texts = np.array([
      [0.2, 0.9, 0.0],   # caption 0 (image 0) looks like image 1
      [0.8, 0.0, 0.1],   # caption 1 (image 0)
      [0.0, 0.5, 0.5],   # caption 2 (image 1): tie between images 1 and 2
      [0.0, 0.6, 0.6],   # caption 3 (image 2): tie, image 1 has the lower index
      [0.1, 0.0, 0.3],   # caption 4 (image 2)
  ])
  return images, texts, np.array([0, 0, 1, 2, 2])


def test_retrieval_recall_at_k_by_hand():
  images, texts, text_to_image = toy_retrieval()
  out = metrics.retrieval(images, texts, text_to_image, ks=(1, 2, 5))
  # Image->text (sims = texts[:, i]): image 0 scores 0.2, 0.8, 0, 0, 0.1 -> caption 1 (its own)
  # first; image 1: 0.9 (c0), 0.5 (c2), 0.6 (c3) -> its c2 is third; image 2: 0, 0.1, 0.5, 0.6,
  # 0.3 -> c3 (its own) first.
  assert out["text_retrieval_recall@1"] == pytest.approx(2 / 3)
  assert out["text_retrieval_recall@2"] == pytest.approx(2 / 3)
  assert out["text_retrieval_recall@5"] == 1.0
  # Text->image: c0 -> image 1 first, its image 0 second (rank 1); c1 -> image 0 (rank 0);
  # c2 -> tie 0.5/0.5, image 1 wins on index (rank 0); c3 -> tie, image 1 wins, its image 2 is
  # rank 1; c4 -> image 2 (rank 0).
  assert out["image_retrieval_recall@1"] == pytest.approx(3 / 5)
  assert out["image_retrieval_recall@2"] == 1.0


def test_retrieval_in_chunks_equals_one_matrix(monkeypatch):
  rng = np.random.default_rng(0)
  images = rng.standard_normal((37, 8))
  texts = rng.standard_normal((111, 8))
  text_to_image = np.repeat(np.arange(37), 3)
  whole = metrics.retrieval(images, texts, text_to_image)
  monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", 200)  # a few rows per chunk
  assert metrics.retrieval(images, texts, text_to_image) == whole
  # Against a direct computation of recall@5 by sorting.
  sims = images @ texts.T
  order = np.argsort(-sims, axis=1, kind="stable")[:, :5]
  want = np.mean([np.any(text_to_image[order[i]] == i) for i in range(37)])
  assert whole["text_retrieval_recall@5"] == pytest.approx(want)


def test_retrieval_needs_a_caption_per_image():
  with pytest.raises(ValueError, match="at least one caption"):
    metrics.retrieval(np.eye(2), np.eye(2)[:1], np.array([0]))


def test_ridge_probe_separates_linearly_separable_classes():
  rng = np.random.default_rng(0)
  centres = rng.standard_normal((4, 16)) * 4
  train_y, test_y = rng.integers(0, 4, 400), rng.integers(0, 4, 200)
  train_x = centres[train_y] + rng.standard_normal((400, 16))
  test_x = centres[test_y] + rng.standard_normal((200, 16))
  out = metrics.ridge_probe(train_x, train_y, test_x, test_y, 4)
  assert out["acc1"] > 0.95
  noise = metrics.ridge_probe(rng.standard_normal((400, 16)), train_y, test_x, test_y, 4)
  assert noise["acc1"] < 0.5  # features unrelated to the labels: near chance (0.25)


def test_few_shot_indices_take_k_per_class():
  labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
  rows = metrics.few_shot_indices(labels, 5, seed=1)
  assert np.bincount(labels[rows]).tolist() == [5, 3, 5]
  assert len(set(rows)) == len(rows)
  np.testing.assert_array_equal(rows, metrics.few_shot_indices(labels, 5, seed=1))
