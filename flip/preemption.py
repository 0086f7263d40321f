"""Stopping a run cleanly on SIGTERM or SIGINT: finish the step, save, exit with 128 + signal.

A preempted Cloud TPU spot/preemptible VM, a batch scheduler (Slurm, Kubernetes) or `kill` sends
SIGTERM; Ctrl-C sends SIGINT. While `StopSignal` is active, the first of either only asks the
training loop to stop: the loop asks `should_stop(step)` after every step and, once it answers
yes, saves a checkpoint (with the input position) and ends with `errors.Interrupted`, which the
entry points turn into one line and exit status 128 + the signal (143 for SIGTERM, 130 for
SIGINT). A second signal ends the process at once (the default action of that signal).

With several processes every one must stop after the same step (the checkpoint is written by
all of them together). Then, as orbax's preemption support does, the decision is JAX's
preemption sync point (`multihost_utils.reached_preemption_sync_point`): a SIGTERM to any process
reaches the others through the coordination service, and all of them stop after the same step.
JAX listens for SIGTERM itself there; a SIGINT is turned into a SIGTERM to the same process so
that it takes the same route.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
  """Catches SIGTERM and SIGINT while active (`with StopSignal() as stop:`), in the main thread.

  Outside the main thread (where Python cannot handle signals) it catches nothing and never asks
  to stop.
  """

  def __init__(self):
    self.signum: int | None = None  # the first signal received by this process
    self._previous: dict[int, object] = {}
    self._multi = False
    self._no_sync = False  # several processes, but JAX's preemption service is off

  def __enter__(self) -> "StopSignal":
    if threading.current_thread() is not threading.main_thread():
      return self
    self._multi = jax.process_count() > 1
    # Several processes: JAX's preemption notifier keeps SIGTERM (see the module docstring).
    for signum in (signal.SIGINT,) if self._multi else SIGNALS:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      if handler is not None:  # None: a handler installed outside Python (JAX's notifier)
        signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame) -> None:
    del frame
    if self.signum is not None:  # the second signal: its default action, now
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.signum = signum
    name = signal.Signals(signum).name
    logging.warning("%s received: stopping after this step, with a checkpoint (a second %s "
                    "stops at once, without one).", name, name)
    if self._multi and signum != signal.SIGTERM:
      os.kill(os.getpid(), signal.SIGTERM)  # to JAX's notifier: every process stops together

  def should_stop(self, step: int) -> bool:
    """Whether to stop after `step`: the same answer in every process (call it every step)."""
    if not self._multi:
      return self.signum is not None
    if self._no_sync:
      return False
    try:
      reached = multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError as e:  # jax_enable_preemption_service turned off
      logging.warning("No preemption support in this multi-process run (%s): a SIGTERM ends "
                      "it without a checkpoint.", e)
      self._no_sync = True
      return False
    if not reached:
      return False
    if self.signum is None:
      self.signum = signal.SIGTERM  # the notice reached this process through the service
    for signum in SIGNALS:  # from here on, a signal stops this process at once
      self._previous.setdefault(signum, signal.getsignal(signum))
      signal.signal(signum, signal.SIG_DFL)
    return True
