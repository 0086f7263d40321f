"""The released FLIP (t5x) checkpoints: reading / writing the layout, and the imported model
against an independent NumPy forward pass of the released architecture.

A small random model in the released layout (names, shapes, flat attention kernels, conv patch
kernel, the stored sin-cos table with its zero class row) is written as a t5x checkpoint
directory, read back bit-exactly, mapped onto this codebase's parameters and run: image and text
embeddings must equal the reference's within 1e-5 relative.
"""

import gzip
import json
import math
import os
import shutil
import zlib

import jax
import msgpack
import numpy as np
import pytest

import forkserver
from conftest import jit_apply
from flip import config_lib
from flip import errors
from flip.formats import flip_official as fo
from flip.models import flip as flip_lib

TINY = dict(image_size=32, patch_size=8, image_width=64, image_depth=2, image_heads=4,
            image_mlp_dim=256, text_width=64, text_depth=2, text_heads=4, text_mlp_dim=256,
            vocab_size=30523, text_len=32, embed_dim=32)
POS = "img_encoder/posembed_encoder/pos_embedding"


# ---------------------------------------------------------------------------------------------
# The released layout and forward pass, written here from the release's semantics.


def released_shapes(s):
  """Names -> shapes of the released checkpoint (models_flip.py's module names)."""
  out = {}

  def tower(prefix, width, depth, mlp):
    for i in range(depth):
      b = f"{prefix}/Transformer/encoderblock_{i:02d}/"
      for ln in ("LayerNorm_0", "LayerNorm_1"):
        out[b + ln + "/scale"] = out[b + ln + "/bias"] = (width,)
      for p in ("query", "key", "value", "out"):
        out[b + f"MultiHeadDotProductAttention_0/{p}/kernel"] = (width, width)
        out[b + f"MultiHeadDotProductAttention_0/{p}/bias"] = (width,)
      out[b + "MlpBlock_0/Dense_0/kernel"] = (width, mlp)
      out[b + "MlpBlock_0/Dense_0/bias"] = (mlp,)
      out[b + "MlpBlock_0/Dense_1/kernel"] = (mlp, width)
      out[b + "MlpBlock_0/Dense_1/bias"] = (width,)
    out[f"{prefix}/Transformer/encoder_norm/scale"] = (width,)
    out[f"{prefix}/Transformer/encoder_norm/bias"] = (width,)

  p, w, wt = s["patch_size"], s["image_width"], s["text_width"]
  grid = s["image_size"] // p
  out.update({
      "img_encoder/embedding/kernel": (p, p, 3, w), "img_encoder/embedding/bias": (w,),
      "img_encoder/cls": (1, 1, w), POS: (1, 1 + grid * grid, w),
      "txt_encoder/token_embedding/embedding": (s["vocab_size"], wt),
      "txt_encoder/posembed_encoder/pos_embedding": (1, s["text_len"], wt),
      "img_mlp1/kernel": (w, s["embed_dim"]), "txt_mlp1/kernel": (wt, s["embed_dim"]),
      "logit_scale": (1,)})
  tower("img_encoder", w, s["image_depth"], s["image_mlp_dim"])
  tower("txt_encoder", wt, s["text_depth"], s["text_mlp_dim"])
  return out


def sincos_positions(width, grid):
  """[1 + grid*grid, width]: a zero class row, then per patch (row-major) sin/cos of the column
  in the first half of the channels and of the row in the second, frequencies
  1 / 10000**(k / (width/4)), computed in float32."""
  k = np.arange(width // 4, dtype=np.float32)
  freq = (1.0 / np.float32(10000.0) ** (k / np.float32(width // 4))).astype(np.float32)
  table = np.zeros((1 + grid * grid, width), np.float32)
  for r in range(grid):
    for c in range(grid):
      a_col = (np.float32(c) * freq).astype(np.float32)
      a_row = (np.float32(r) * freq).astype(np.float32)
      table[1 + r * grid + c] = np.concatenate(
          [np.sin(a_col), np.cos(a_col), np.sin(a_row), np.cos(a_row)])
  return table


def random_released(s, seed=0):
  rng = np.random.default_rng(seed)
  flat = {}
  for name, shape in released_shapes(s).items():
    if name.endswith("/scale"):
      value = 1.0 + 0.2 * rng.standard_normal(shape)
    elif name == "logit_scale":
      value = np.array([5.0])  # above log(100): the model clips it
    else:
      value = rng.standard_normal(shape) * (0.5 if "cls" in name or "embed" in name else 0.1)
    flat[name] = value.astype(np.float32)
  flat[POS] = sincos_positions(s["image_width"], s["image_size"] // s["patch_size"])[None]
  return flat


def _ln(x, flat, name):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * flat[name + "/scale"] + flat[name + "/bias"]


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _encoder(x, flat, prefix, depth, heads):
  """Pre-LN blocks (no attention mask at all) and the final LayerNorm, float64."""
  for i in range(depth):
    b = f"{prefix}/Transformer/encoderblock_{i:02d}/"
    a = b + "MultiHeadDotProductAttention_0/"
    y = _ln(x, flat, b + "LayerNorm_0")
    n, t, w = y.shape
    hd = w // heads
    q, k, v = ((y @ flat[a + p + "/kernel"] + flat[a + p + "/bias"]).reshape(n, t, heads, hd)
               for p in ("query", "key", "value"))
    logits = np.einsum("nqhd,nkhd->nhqk", q / np.sqrt(hd), k)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    o = np.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, t, w)  # column h * hd + d
    x = x + o @ flat[a + "out/kernel"] + flat[a + "out/bias"]
    y = _ln(x, flat, b + "LayerNorm_1")
    m = b + "MlpBlock_0/"
    y = _gelu_tanh(y @ flat[m + "Dense_0/kernel"] + flat[m + "Dense_0/bias"])
    x = x + y @ flat[m + "Dense_1/kernel"] + flat[m + "Dense_1/bias"]
  return _ln(x, flat, f"{prefix}/Transformer/encoder_norm")


def _normalize(z):
  return z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)


def reference_image(flat, images, s, keep=None):
  """The released image tower: a VALID conv with stride = kernel = p (+ bias), the stored
  positions (row 0, the class slot, unused), optional masking (kept indices), the class token
  prepended, the encoder, the mean over all tokens, img_mlp1, L2 normalisation."""
  flat = {k: v.astype(np.float64) for k, v in flat.items()}
  images = images.astype(np.float64)
  p = s["patch_size"]
  n, height, width, _ = images.shape
  h, w = height // p, width // p
  x = np.einsum("nhawbc,abco->nhwo", images.reshape(n, h, p, w, p, 3),
                flat["img_encoder/embedding/kernel"]) + flat["img_encoder/embedding/bias"]
  x = x.reshape(n, h * w, -1) + flat[POS][0, 1:]
  if keep is not None:
    x = np.take_along_axis(x, keep[..., None], axis=1)
  cls = np.broadcast_to(flat["img_encoder/cls"], (n, 1, x.shape[-1]))
  x = np.concatenate([cls, x], axis=1)
  x = _encoder(x, flat, "img_encoder", s["image_depth"], s["image_heads"])
  return _normalize(x.mean(axis=1) @ flat["img_mlp1/kernel"])


def reference_text(flat, tokens, s):
  """The released text tower: token embedding + learned positions, the encoder over all the
  tokens (padding attended), the first token, txt_mlp1, L2 normalisation."""
  flat = {k: v.astype(np.float64) for k, v in flat.items()}
  x = flat["txt_encoder/token_embedding/embedding"][tokens]
  x = x + flat["txt_encoder/posembed_encoder/pos_embedding"][0, :tokens.shape[1]]
  x = _encoder(x, flat, "txt_encoder", s["text_depth"], s["text_heads"])
  return _normalize(x[:, 0] @ flat["txt_mlp1/kernel"])


def assert_close(got, want, what, rtol=1e-5):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  err = np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1)
  assert err.max() <= rtol, f"{what}: relative error {err.max():.2e}"


# ---------------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="module")
def flat():
  return random_released(TINY)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, flat):
  directory = str(tmp_path_factory.mktemp("flip_official") / "checkpoint_7")
  # Small chunks: the token embedding (30523 x 64) is written as 131 chunks of 233 rows.
  fo.write_checkpoint(directory, flat, step=7, chunk_elements=2 ** 16)
  return directory


def copy_ckpt(ckpt, tmp_path):
  out = str(tmp_path / "ckpt")
  shutil.copytree(ckpt, out)
  return out


@pytest.fixture(scope="module")
def model_and_config():
  config = config_lib.base_config()
  fo.apply(config, TINY)
  config.model.scan_layers = False
  config.input.data = None
  config = config_lib.resolve(config)
  return flip_lib.from_config(config.model), config


def inputs(seed=1):
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)  # already normalised
  tokens = rng.integers(1, TINY["vocab_size"], (3, 32)).astype(np.int32)
  tokens[0, 5:] = 0  # padding
  tokens[1, 20:] = 0
  return images, tokens


# ---------------------------------------------------------------------------------------------
# The layout.


def test_write_read_roundtrip_bit_exact(ckpt, flat):
  assert set(released_shapes(TINY)) == set(fo.expected_shapes(TINY))
  got = fo.read_checkpoint(ckpt)
  assert set(got) == set(flat)
  for name, value in flat.items():
    assert got[name].dtype == np.float32 and got[name].shape == value.shape, name
    assert np.array_equal(got[name], value), name
  # The on-disk layout t5x writes.
  embed_dir = os.path.join(ckpt, "target.txt_encoder.token_embedding.embedding")
  meta = json.load(open(os.path.join(embed_dir, ".zarray")))
  assert meta["chunks"] == [233, 64] and meta["compressor"]["id"] == "gzip"
  assert meta["dtype"] == "<f4" and meta["zarr_format"] == 2
  assert len([f for f in os.listdir(embed_dir) if f != ".zarray"]) == 131
  assert os.path.isfile(os.path.join(embed_dir, "130.0"))
  with open(os.path.join(embed_dir, "0.0"), "rb") as f:
    assert f.read(2) == b"\x1f\x8b"  # a gzip stream
  assert os.path.isfile(os.path.join(
      ckpt, "target.img_encoder.Transformer.encoderblock_01.MultiHeadDotProductAttention_0."
      "query.kernel", "0.0"))
  assert os.path.isfile(os.path.join(ckpt, "target.img_encoder.embedding.kernel", "0.0.0.0"))
  index = msgpack.unpackb(open(os.path.join(ckpt, "checkpoint"), "rb").read(), raw=False)
  assert index["version"] == 3 and set(index["optimizer"]) == {"target", "state"}
  spec = index["optimizer"]["target"]["img_encoder"]["cls"]
  assert spec["kvstore"]["path"] == "target.img_encoder.cls"
  assert spec["metadata"]["shape"] == [1, 1, 64] and spec["driver"] == "zarr"
  assert isinstance(index["optimizer"]["state"]["step"], msgpack.ExtType)  # inline int32


def test_read_finds_the_checkpoint_folder(ckpt, flat, tmp_path):
  model_dir = tmp_path / "model"  # a zip may unpack to a model dir or into a folder of its own
  shutil.copytree(ckpt, model_dir / "checkpoint_7")
  shutil.copytree(ckpt, model_dir / "checkpoint_3")
  for where in (model_dir, tmp_path, model_dir / "checkpoint_7" / "checkpoint"):
    assert fo.find_index(str(where)) == str(model_dir / "checkpoint_7" / "checkpoint")
  got = fo.read_checkpoint(str(model_dir))
  assert np.array_equal(got["img_mlp1/kernel"], flat["img_mlp1/kernel"])


def _write_zarr_by_hand(directory, arr, chunks, compressor, order="C"):
  """A zarr v2 array written independently of the module: edge chunks padded to full size."""
  shutil.rmtree(directory)
  os.makedirs(directory)
  meta = {"zarr_format": 2, "shape": list(arr.shape), "chunks": chunks, "dtype": "<f4",
          "compressor": {"id": compressor, "level": 5}, "fill_value": None, "filters": None,
          "order": order}  # no dimension_separator: zarr v2's default "."
  json.dump(meta, open(os.path.join(directory, ".zarray"), "w"))
  grid = [-(-s // c) for s, c in zip(arr.shape, chunks)]
  for idx in np.ndindex(*grid):
    block = np.zeros(chunks, "<f4")
    part = arr[tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, chunks))]
    block[tuple(slice(0, n) for n in part.shape)] = part
    raw = block.tobytes(order=order)
    raw = gzip.compress(raw) if compressor == "gzip" else zlib.compress(raw)
    open(os.path.join(directory, ".".join(map(str, idx))), "wb").write(raw)


def test_read_edge_chunks_zlib_fortran_and_inline_arrays(ckpt, flat, tmp_path):
  d = copy_ckpt(ckpt, tmp_path)
  name = "img_encoder/Transformer/encoderblock_00/MlpBlock_0/Dense_0/kernel"  # 64 x 256
  _write_zarr_by_hand(os.path.join(d, "target." + name.replace("/", ".")), flat[name], [24, 100],
                      "zlib")
  name2 = "txt_mlp1/kernel"  # 64 x 32
  _write_zarr_by_hand(os.path.join(d, "target.txt_mlp1.kernel"), flat[name2], [10, 7], "gzip",
                      order="F")
  # An inline (msgpack ext) array in place of a TensorStore spec, as t5x writes unpartitioned
  # leaves; the array folder is then not needed.
  index_path = os.path.join(d, "checkpoint")
  index = msgpack.unpackb(open(index_path, "rb").read(), raw=False)
  bias = flat["img_encoder/embedding/bias"]
  payload = msgpack.packb(((64,), "float32", bias.tobytes()), use_bin_type=True)
  index["optimizer"]["target"]["img_encoder"]["embedding"]["bias"] = msgpack.ExtType(1, payload)
  open(index_path, "wb").write(msgpack.packb(index, use_bin_type=True))
  shutil.rmtree(os.path.join(d, "target.img_encoder.embedding.bias"))
  got = fo.read_checkpoint(d)
  assert np.array_equal(got[name], flat[name])
  assert np.array_equal(got[name2], flat[name2])
  assert np.array_equal(got["img_encoder/embedding/bias"], bias)


# ---------------------------------------------------------------------------------------------
# The model.


def test_params_roundtrip_and_detect(flat):
  params = fo.to_params(flat, TINY)
  assert params["image"]["cls_token"].shape == (64,) and params["logit_scale"].shape == ()
  assert params["image"]["encoder"]["block01"]["attn"]["query"]["kernel"].shape == (64, 4, 16)
  assert params["image"]["encoder"]["block01"]["attn"]["out"]["kernel"].shape == (4, 16, 64)
  assert params["image"]["patch_embed"]["kernel"].shape == (192, 64)
  assert params["text"]["pos_embed"].shape == (32, 64)
  back = fo.from_params(params, TINY)
  assert set(back) == set(flat)
  for name, value in flat.items():
    if name == POS:
      np.testing.assert_allclose(back[name], value, rtol=0, atol=1e-6)
    else:
      assert np.array_equal(back[name], value), name
  # The heads are not in the shapes: the tiny model needs them given.
  with pytest.raises(errors.ConfigError, match="--model"):
    fo.detect(flat)
  assert fo.detect(flat, {"image_heads": 4, "text_heads": 4}) == TINY
  with pytest.raises(errors.CheckpointMismatchError, match="not flip_large16_laion2b"):
    fo.detect(flat, "flip_large16_laion2b")
  # The released sizes are recognised from the shapes alone (zero-copy stand-in arrays).
  for name, sizes in fo.MODELS.items():
    fake = {k: np.broadcast_to(np.float32(0), shape)
            for k, shape in released_shapes(sizes).items()}
    assert fo.detect(fake) == sizes, name
    assert fo.detect(fake, name) == sizes
  assert fo.model_sizes("flip_huge14_laion2b")["image_width"] == 1280
  with pytest.raises(errors.ConfigError, match="flip_large16_laion2b"):
    fo.model_sizes("flip_base16")


def test_matches_the_released_forward_pass(ckpt, model_and_config):
  model, config = model_and_config
  assert config.model.act == "gelu_tanh" and config.model.image.class_token
  assert config.model.text.pool == "first" and not config.model.text.pad_mask
  flat = fo.read_checkpoint(ckpt)
  params = fo.to_params(flat, TINY)
  images, tokens = inputs()
  image_emb, text_emb, logit_scale = jit_apply(model, {"params": params}, images, tokens)
  assert_close(image_emb, reference_image(flat, images, TINY), "image embeddings")
  assert_close(text_emb, reference_text(flat, tokens, TINY), "text embeddings")
  assert float(logit_scale) == pytest.approx(math.log(100.0), rel=1e-6)  # 5.0, clipped
  # The padding is attended to: how much there is changes the embedding.
  shorter = tokens[:, :16]
  text_16 = jit_apply(model, {"params": params}, shorter, method=flip_lib.FLIP.encode_text)
  assert_close(text_16, reference_text(flat, shorter, TINY), "text embeddings (16 tokens)")
  assert np.abs(np.asarray(text_16)[0] - np.asarray(text_emb)[0]).max() > 1e-4


def test_masking_keeps_the_class_token(ckpt, model_and_config, monkeypatch):
  from flip.models import vit  # only to record the kept patches
  model, _ = model_and_config
  flat = fo.read_checkpoint(ckpt)
  params = fo.to_params(flat, TINY)
  images, _ = inputs()
  kept = []
  masking = vit.random_masking

  def recording(tokens, rng, ratio):
    out, keep_idx = masking(tokens, rng, ratio)
    kept.append(keep_idx)
    return out, keep_idx

  monkeypatch.setattr(vit, "random_masking", recording)

  def encode(params, images):  # one program, its kept patches an output
    emb = model.apply({"params": params}, images, mask_ratio=0.5,
                      rngs={"mask": jax.random.key(0)}, method=flip_lib.FLIP.encode_image)
    return emb, kept[0]

  emb, keep = map(np.asarray, jax.jit(encode)(params, images))
  assert emb.shape == (2, TINY["embed_dim"])
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
  assert len(kept) == 1 and keep.shape == (2, 8)  # int(16 * 0.5) patches, plus the class token
  assert_close(emb, reference_image(flat, images, TINY, keep=keep), "masked image embeddings")


# ---------------------------------------------------------------------------------------------
# Errors.


def test_missing_array_directory(ckpt, tmp_path):
  d = copy_ckpt(ckpt, tmp_path)
  gone = os.path.join(d, "target.img_encoder.Transformer.encoderblock_01.LayerNorm_1.scale")
  shutil.rmtree(gone)
  with pytest.raises(errors.NotFoundError) as e:
    fo.read_checkpoint(d)
  assert "img_encoder/Transformer/encoderblock_01/LayerNorm_1/scale" in str(e.value)
  assert gone in str(e.value)


def test_missing_chunk(ckpt, flat, tmp_path):
  d = copy_ckpt(ckpt, tmp_path)
  chunk = os.path.join(d, "target.txt_encoder.token_embedding.embedding", "5.0")
  os.remove(chunk)
  with pytest.raises(errors.NotFoundError) as e:
    fo.read_checkpoint(d)
  assert "txt_encoder/token_embedding/embedding" in str(e.value) and chunk in str(e.value)
  got = fo.read_checkpoint(d, missing_chunks="zeros")["txt_encoder/token_embedding/embedding"]
  assert not got[5 * 233:6 * 233].any()
  assert np.array_equal(got[6 * 233:], flat["txt_encoder/token_embedding/embedding"][6 * 233:])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "short"])
def test_corrupt_chunk(ckpt, tmp_path, damage):
  d = copy_ckpt(ckpt, tmp_path)
  chunk = os.path.join(d, "target.img_mlp1.kernel", "0.0")
  data = open(chunk, "rb").read()
  if damage == "truncate":
    data = data[:len(data) // 2]
  elif damage == "garbage":
    data = data[:10] + bytes(200)
  else:  # a valid gzip stream of too few bytes
    data = gzip.compress(np.zeros(10, "<f4").tobytes())
  open(chunk, "wb").write(data)
  with pytest.raises(errors.DataError) as e:
    fo.read_checkpoint(d)
  assert "img_mlp1/kernel" in str(e.value) and chunk in str(e.value)


def test_garbage_index_and_no_index(ckpt, tmp_path):
  d = copy_ckpt(ckpt, tmp_path)
  open(os.path.join(d, "checkpoint"), "wb").write(b"\xc1 this is not msgpack")
  with pytest.raises(errors.DataError, match="not a t5x checkpoint index"):
    fo.read_checkpoint(d)
  open(os.path.join(d, "checkpoint"), "wb").write(msgpack.packb({"something": 1}))
  with pytest.raises(errors.DataError, match="no 'target'"):
    fo.read_checkpoint(d)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(errors.NotFoundError, match="no 'checkpoint' file"):
    fo.read_checkpoint(str(empty))
  zipfile = tmp_path / "flip_large16_laion2b_v2.zip"
  zipfile.write_bytes(b"PK\x03\x04")
  with pytest.raises(errors.DataError, match="pass the unzipped folder"):
    fo.read_checkpoint(str(zipfile))
  with pytest.raises(errors.NotFoundError, match="does not exist"):
    fo.read_checkpoint(str(tmp_path / "nowhere"))


def test_zarray_shape_differs_from_index(ckpt, tmp_path):
  d = copy_ckpt(ckpt, tmp_path)
  meta_path = os.path.join(d, "target.txt_mlp1.kernel", ".zarray")
  meta = json.load(open(meta_path))
  meta["shape"], meta["chunks"] = [32, 64], [32, 64]
  json.dump(meta, open(meta_path, "w"))
  with pytest.raises(errors.DataError) as e:
    fo.read_checkpoint(d)
  assert "txt_mlp1/kernel" in str(e.value) and "[32, 64]" in str(e.value)


def test_shape_and_name_mismatches(flat):
  other = dict(TINY, text_width=128)
  with pytest.raises(errors.CheckpointMismatchError) as e:
    fo.to_params(flat, other)
  assert "txt_encoder/" in str(e.value) and "(30523, 64)" in str(e.value)
  assert "(30523, 128)" in str(e.value)
  deeper = dict(TINY, image_depth=3)
  with pytest.raises(errors.CheckpointMismatchError, match="missing.*encoderblock_02"):
    fo.to_params(flat, deeper)
  extra = dict(flat, **{"img_encoder/extra/kernel": np.zeros(3, np.float32)})
  with pytest.raises(errors.CheckpointMismatchError, match="unknown.*img_encoder/extra/kernel"):
    fo.to_params(extra, TINY)
  learned = dict(flat, **{POS: flat[POS] + 0.01})
  with pytest.raises(errors.CheckpointMismatchError, match="sin-cos"):
    fo.to_params(learned, TINY)
  params = fo.to_params(flat, TINY)
  with pytest.raises(errors.CheckpointMismatchError) as e:
    fo.from_params(params, dict(TINY, embed_dim=48))
  assert "image_proj/kernel" in str(e.value) and "(64, 32)" in str(e.value)
  assert "(64, 48)" in str(e.value)


@pytest.mark.slow
def test_import_tool_gives_the_released_embeddings(ckpt, flat, tmp_path):
  """tools/import_weights.py --format=flip_official: a workdir whose FLIPModel embeds captions
  (tokenized as the release does) and images as the released forward pass does."""
  import json
  import os
  import subprocess
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = tmp_path / "imported"
  heads = json.dumps({"image_heads": TINY["image_heads"], "text_heads": TINY["text_heads"]})
  result = subprocess.run([*forkserver.python(), "tools/import_weights.py",
                           "--format=flip_official", f"--checkpoint={os.path.dirname(ckpt)}",
                           f"--model={heads}", f"--workdir={workdir}"],
                          cwd=root, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  from flip import inference
  from flip.data import pipeline
  model = inference.FLIPModel.load(str(workdir), batch_size=4)
  assert model.config.input.tokenizer == "flip_official" and model.config.model.act == "gelu_tanh"
  captions = ["a photo of a dog.", "", "Two CATS on a sofa, sleeping"]
  tokens = model.tokenizer(captions)
  assert tokens.shape == (3, 32) and tokens[1].tolist() == [0] * 32
  assert_close(model.encode_texts(captions), reference_text(flat, tokens, TINY), "text")
  rng = np.random.default_rng(3)
  pictures = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
  pixels = np.stack([pipeline.normalize(pipeline.center_crop(
      np.asarray(p, np.float32), 32)).numpy() for p in pictures])
  assert_close(model.encode_images(pictures), reference_image(flat, pixels, TINY), "image")
  # Bad input is one line before anything is written.
  result = subprocess.run([*forkserver.python(), "tools/import_weights.py",
                           "--format=flip_official", f"--checkpoint={tmp_path / 'nothing'}",
                           f"--workdir={tmp_path / 'w'}"],
                          cwd=root, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: ")
  assert not (tmp_path / "w").exists()
