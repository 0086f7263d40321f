"""open_clip in a process of its own (torchvision crashes a process that imported TensorFlow
first, as every test process has): builds models, writes their weights, embeds.

  python tests/open_clip_worker.py make MODEL OUT_DIR INPUTS.npz [--bin] [--layers=N]
      open_clip MODEL (a name, or a JSON model config) with random weights (every parameter
      perturbed, so that LayerNorms and biases are not ones and zeros): OUT_DIR/model.safetensors,
      OUT_DIR/model.bin (--bin) and OUT_DIR/ref.npz (image/text embeddings, logit scale,
      open_clip.tokenize ids). --layers=N: the named model with N blocks in each tower (its
      config otherwise unchanged, registered under its own name from OUT_DIR/MODEL.json).
  python tests/open_clip_worker.py load MODEL WEIGHTS INPUTS.npz OUT.npz
      create_model_and_transforms(MODEL, pretrained=WEIGHTS) (MODEL a name, a JSON model config
      or "local-dir:DIR" with WEIGHTS "-"), then the same embeddings into OUT.npz.
  python tests/open_clip_worker.py jobs '[[COMMAND, ARGS...], ...]'
      each command of the JSON list in turn, in this one process (torch is imported once).
INPUTS.npz: images (uint8 [n, S, S, 3], already at the model's size) and texts (str [m]).
"""

import json
import sys

import numpy as np
import torch

import open_clip

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def embed(model, inputs):
  images = (inputs["images"].astype(np.float32) / 255.0 - MEAN) / STD
  pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  tokens = open_clip.tokenize([str(t) for t in inputs["texts"]])
  with torch.no_grad():
    image = model.encode_image(pixels, normalize=True).numpy()
    text = model.encode_text(tokens, normalize=True).numpy()
  return dict(image=image, text=text, logit_scale=float(model.logit_scale.exp()),
              tokens=tokens.numpy())


def run(argv):
  """One command: argv as on the command line, after the script's name."""
  torch.manual_seed(0)  # each model's weights as if it were made alone
  command = argv[0]
  if command == "make":
    name, out, inputs = argv[1:4]
    layers = [a.split("=", 1)[1] for a in argv if a.startswith("--layers=")]
    if layers:  # the named config, shallower, registered under the same name
      cfg = json.loads(json.dumps(open_clip.get_model_config(name)))
      cfg["vision_cfg"]["layers"] = cfg["text_cfg"]["layers"] = int(layers[0])
      name = f"{out}/{name}.json"
      with open(name, "w") as f:
        json.dump(cfg, f)
    if name.endswith(".json"):  # a model config of one's own, registered under its file name
      open_clip.add_model_config(name)
      name = name.rsplit("/", 1)[-1][:-len(".json")]
    model = open_clip.create_model(name, pretrained=None)
    with torch.no_grad():
      for p in model.parameters():
        p.add_(0.02 * torch.randn_like(p))
      model.logit_scale.fill_(np.log(1 / 0.05))
    model.eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
    save_file(state, f"{out}/model.safetensors")
    if "--bin" in argv:
      torch.save(state, f"{out}/model.bin")
    np.savez(f"{out}/ref.npz", **embed(model, np.load(inputs)))
  elif command == "load":
    name, weights, inputs, out = argv[1:5]
    if name.endswith(".json"):
      open_clip.add_model_config(name)
      name = name.rsplit("/", 1)[-1][:-len(".json")]
    if weights == "-":
      model, _, _ = open_clip.create_model_and_transforms(name)
    else:
      model, _, _ = open_clip.create_model_and_transforms(name, pretrained=weights)
    model.eval()
    np.savez(out, **embed(model, np.load(inputs)))
  else:
    raise SystemExit(f"unknown command {command}")


def main():
  if sys.argv[1] == "jobs":
    for argv in json.loads(sys.argv[2]):
      run(argv)
  else:
    run(sys.argv[1:])


if __name__ == "__main__":
  main()
