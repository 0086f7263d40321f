"""The entry-point wrapper (flip.cli): one error policy, recipes by name."""

import pytest

from flip import cli
from flip import config_lib
from flip import errors


def _call(main):
  return cli._call(main, False, False, ["prog"])  # pylint: disable=protected-access


def test_expected_errors_print_one_line_and_exit_1(capsys):
  def main(argv):
    del argv
    raise errors.ConfigError("config.mask_ratio=1.5 must be in [0, 1).")

  with pytest.raises(SystemExit) as exit_info:
    _call(main)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert err == "error: config.mask_ratio=1.5 must be in [0, 1).\n"


@pytest.mark.parametrize("error", [ValueError("a bug"), FileNotFoundError("a bug"),
                                   KeyError("a bug"), RuntimeError("a bug")])
def test_other_errors_keep_their_traceback(error):
  """Built-in exceptions are not shortened: they are bugs (or unexpected) and propagate."""
  def main(argv):
    del argv
    raise error

  with pytest.raises(type(error)):
    _call(main)


def test_flip_errors_are_also_the_builtin_kinds():
  assert issubclass(errors.ConfigError, ValueError)
  assert issubclass(errors.NotFoundError, FileNotFoundError)
  assert issubclass(errors.NotWritableError, PermissionError)
  assert issubclass(errors.DivergedError, FloatingPointError)
  assert issubclass(errors.DistributedError, ConnectionError)


def test_recipe_names_become_their_files(tmp_path):
  path = config_lib.recipe_path("vitl16_mask50")
  assert path.endswith("vitl16_mask50.py")
  argv = ["prog", "--config=vitl16_mask50:local,mask=0.75", "--workdir=/tmp/x",
          "--config.total_steps=3"]
  assert cli.recipe_argv(argv) == ["prog", f"--config={path}:local,mask=0.75", "--workdir=/tmp/x",
                                   "--config.total_steps=3"]
  assert cli.recipe_argv(["prog", "--config", "demo"]) == [
      "prog", "--config", config_lib.recipe_path("demo")]
  # Files (existing, or with a directory) are kept; other flags too.
  recipe = tmp_path / "mine.py"
  recipe.write_text("")
  kept = ["prog", f"--config={recipe}:local", "--config=configs/demo.py", "--tune=demo"]
  assert cli.recipe_argv(kept) == kept
  assert cli.recipe_argv(["prog", "--tune=demo"], ("tune",)) == [
      "prog", f"--tune={config_lib.recipe_path('demo')}"]


def test_unknown_recipe_name_is_one_line(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.recipe_argv(["prog", "--config=vitl16_mask51"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "vitl16_mask50" in err and "vitl16_mask51" in err
