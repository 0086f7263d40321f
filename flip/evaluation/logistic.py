"""CLIP's linear-probe protocol: L2-regularised multinomial logistic regression on frozen features.

The CLIP paper (section 3.2, appendix A.3) fits scikit-learn's L-BFGS logistic regression on the
image features and picks the regularisation strength on a validation split with a sweep over
C in [1e-6, 1e6]. Here the same objective,

    sum_i cross_entropy(W x_i + b, y_i) + ||W||^2 / (2 C)        (the intercept b is not penalised,

as in scikit-learn), is minimised with optax's L-BFGS in JAX: a coarse sweep over every decade of
C, then two refinements around the best value (half and quarter decades), each fit warm-started
from the previous one. The probe is then refit on all the training features with the chosen C.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from flip.evaluation import metrics

C_DECADES = tuple(10.0 ** e for e in range(-6, 7))  # the coarse sweep: 1e-6 ... 1e6
MAX_ITER = 1000  # scikit-learn's CLIP probe used max_iter=1000
TOLERANCE = 1e-6  # stop when the gradient's norm (of the mean objective) is below this


def _objective(params, x, y, inverse_c):
  w, b = params
  logits = x @ w + b
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
  return (loss + 0.5 * inverse_c * jnp.sum(w * w)) / x.shape[0]


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _fit(params, x, y, inverse_c, max_iter: int):
  fun = functools.partial(_objective, x=x, y=y, inverse_c=inverse_c)
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=fun)
    return optax.apply_updates(params, updates), state

  def going(carry):
    _, state = carry
    count = otu.tree_get(state, "count")
    grad = otu.tree_get(state, "grad")
    return (count == 0) | ((count < max_iter) & (otu.tree_norm(grad) >= TOLERANCE))

  params, _ = jax.lax.while_loop(going, step, (params, solver.init(params)))
  return params


def fit(x: np.ndarray, y: np.ndarray, num_classes: int, c: float, init=None,
        max_iter: int = MAX_ITER):
  """(W [d, classes], b [classes]) minimising the objective above for one C."""
  x = jnp.asarray(x, jnp.float32)
  if init is None:
    init = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))
  return _fit(init, x, jnp.asarray(y, jnp.int32), jnp.float32(1.0 / c), max_iter)


def scores(params, x: np.ndarray) -> np.ndarray:
  w, b = params
  return np.asarray(jnp.asarray(x, jnp.float32) @ w + b)


def choose_c(train_x, train_y, val_x, val_y, num_classes: int,
             decades: Sequence[float] = C_DECADES, max_iter: int = MAX_ITER
             ) -> tuple[float, dict[float, float]]:
  """The C of best validation accuracy (ties: the smaller C, i.e. the stronger regularisation),
  and the accuracy of every C tried."""
  tried, params = {}, None

  def accuracy(c):
    nonlocal params
    params = fit(train_x, train_y, num_classes, c, params, max_iter)
    tried[c] = float(np.mean(np.argmax(scores(params, val_x), axis=1) == val_y))
    return tried[c]

  for c in sorted(decades):
    accuracy(c)
  best = min(tried, key=lambda c: (-tried[c], c))
  for step in (10 ** 0.5, 10 ** 0.25):  # refine between the neighbours of the best
    for c in (best / step, best * step):
      if c not in tried:
        accuracy(c)
    best = min(tried, key=lambda c: (-tried[c], c))
  return best, tried


def probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
          num_classes: int, val: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0,
          max_iter: int = MAX_ITER) -> dict[str, float]:
  """CLIP's probe: C chosen on `val` (features, labels) or, without it, on a random fifth of the
  training set held out (when there are at least 2 examples per class; otherwise C = 1); then
  refit on the training set (with the held-out fifth). Test acc1, acc5, mean per-class recall
  (CLIP_benchmark's names) and the chosen C."""
  train_x, train_y = np.asarray(train_x, np.float32), np.asarray(train_y)
  if val is not None:
    c, _ = choose_c(train_x, train_y, val[0], np.asarray(val[1]), num_classes,
                    max_iter=max_iter)
  elif len(train_y) >= 2 * num_classes:
    order = np.random.default_rng(seed).permutation(len(train_y))
    held, rest = order[:max(1, len(order) // 5)], order[max(1, len(order) // 5):]
    c, _ = choose_c(train_x[rest], train_y[rest], train_x[held], train_y[held], num_classes,
                    max_iter=max_iter)
  else:
    c = 1.0
  params = fit(train_x, train_y, num_classes, c, max_iter=max_iter)
  out = metrics.classification(scores(params, test_x), np.asarray(test_y), ks=(1, 5))
  out["C"] = float(c)
  return out
