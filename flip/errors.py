"""The errors that the project's checks raise for things a user sets or supplies.

Every check that finds a wrong setting, a missing file or unusable data raises one of these, with
a message that says what to change. The entry points (flip.entry.run: flip.main, flip.evaluate and
the tools) print such an error as one line, `error: <message>`, and exit with status 1; any other
exception is a bug and keeps its traceback.

Each class also derives from the built-in exception a caller would expect (ValueError,
FileNotFoundError, ...), so `except ValueError` keeps working for library users.
"""

from __future__ import annotations


class FlipError(Exception):
  """Base class: an expected error caused by a setting, a file or the data, not a bug."""


class ConfigError(FlipError, ValueError):
  """A config field (or flag) that cannot work: unknown, missing, out of range, inconsistent."""


class DataError(FlipError, ValueError):
  """Input or evaluation data that cannot be read or used as configured."""


class NotFoundError(FlipError, FileNotFoundError):
  """A file, directory, checkpoint or data set that the run was pointed at does not exist."""


class NotWritableError(FlipError, PermissionError):
  """A directory the run must write to cannot be written."""


class WorkdirLockedError(FlipError, RuntimeError):
  """Another run holds the workdir (its lock file, flip/lock.py)."""


class CorruptCheckpointError(FlipError, ValueError):
  """No checkpoint of the workdir can be restored."""


class SaveError(FlipError, OSError):
  """A checkpoint could not be saved (a full disk, lost storage)."""


class CheckpointMismatchError(FlipError, ValueError):
  """A checkpoint's parameters do not fit the configured model."""


class DivergedError(FlipError, FloatingPointError):
  """Training produced a non-finite loss."""


class DistributedError(FlipError, ConnectionError):
  """A multi-process run could not be joined."""


class Interrupted(FlipError):
  """The run was stopped by a signal (SIGTERM, SIGINT) after saving a checkpoint.

  The entry points exit with `exit_status`, 128 + the signal (143 for SIGTERM, 130 for SIGINT).
  """

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum
    self.exit_status = 128 + int(signum)
