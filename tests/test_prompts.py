"""Zero-shot prompt data: OpenAI CLIP's templates and ImageNet class names, and their pickers."""

from __future__ import annotations

import pytest

from flip.evaluation import prompts


def test_counts():
  assert len(prompts.SHORT_TEMPLATES) == 7
  assert len(prompts.CLIP_TEMPLATES) == 80
  assert len(set(prompts.CLIP_TEMPLATES)) == 80
  assert len(prompts.IMAGENET_CLASSNAMES) == 1000


def test_known_entries():
  names = prompts.IMAGENET_CLASSNAMES
  assert names[:3] == ("tench", "goldfish", "great white shark")
  assert names[21] == "kite (bird of prey)"
  assert names[134] == "crane bird" and names[517] == "construction crane"
  assert names[269] == "grey wolf" and names[271] == "red wolf or maned wolf"
  assert names[657] == names[744] == "missile"  # Duplicates kept as in the CLIP notebook.
  assert names[836] == names[837] == "sunglasses"
  assert names[999] == "toilet paper"
  assert prompts.CLIP_TEMPLATES[0] == "a bad photo of a {}."
  assert prompts.CLIP_TEMPLATES[1] == "a photo of many {}."
  assert prompts.CLIP_TEMPLATES[-1] == "a tattoo of the {}."
  assert prompts.SHORT_TEMPLATES[0] == "itap of a {}."
  assert prompts.SHORT_TEMPLATES[-1] == "a photo of the small {}."
  assert set(prompts.SHORT_TEMPLATES) <= set(prompts.CLIP_TEMPLATES)


def test_every_template_has_one_slot():
  for t in prompts.SHORT_TEMPLATES + prompts.CLIP_TEMPLATES:
    assert t.count("{}") == 1, t
    assert t.format("dog").count("dog") == 1


def test_class_names_are_clean():
  for name in prompts.IMAGENET_CLASSNAMES:
    assert name and name == name.strip() and "_" not in name and "{" not in name


def test_templates_by_name_and_list():
  assert prompts.templates("short") == prompts.SHORT_TEMPLATES
  assert prompts.templates("clip80") == prompts.CLIP_TEMPLATES
  assert prompts.templates(["a {}.", "the {}."]) == ("a {}.", "the {}.")
  assert prompts.templates(("a photo of a {}.",)) == ("a photo of a {}.",)


def test_templates_errors():
  with pytest.raises(ValueError, match=r"'nope'.*clip80.*short"):
    prompts.templates("nope")
  with pytest.raises(ValueError, match="exactly one"):
    prompts.templates(["a photo."])
  with pytest.raises(ValueError, match="exactly one"):
    prompts.templates(["a {} and a {}."])
  with pytest.raises(ValueError, match="empty"):
    prompts.templates([])


def test_class_names_from_dataset():
  ds = ["red_circle", "blue_square", "cat"]
  assert prompts.class_names(None, ds) == ["red circle", "blue square", "cat"]
  assert prompts.class_names("", ds) == ["red circle", "blue square", "cat"]


def test_class_names_imagenet():
  ds = [f"n{i:08d}" for i in range(1000)]
  names = prompts.class_names("imagenet", ds)
  assert names == list(prompts.IMAGENET_CLASSNAMES) and isinstance(names, list)
  with pytest.raises(ValueError, match=r"1000.*3"):
    prompts.class_names("imagenet", ["a", "b", "c"])


def test_class_names_list():
  assert prompts.class_names(["x", "y"], ["a_b", "c"]) == ["x", "y"]
  assert prompts.class_names(("x", "y"), ["a_b", "c"]) == ["x", "y"]
  with pytest.raises(ValueError, match=r"3 names.*2 classes"):
    prompts.class_names(["x", "y", "z"], ["a", "b"])


def test_class_names_unknown_name():
  with pytest.raises(ValueError, match="imagenet"):
    prompts.class_names("cifar", ["a", "b"])
