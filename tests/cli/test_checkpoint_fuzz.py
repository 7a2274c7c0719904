"""Property: a damaged checkpoint either loads as valid data or is refused in one line.

Seeded variants of a tiny Llama checkpoint (random bytes of model.safetensors and
config.json flipped, overwritten, truncated or deleted; tensors dropped, reshaped, retyped,
added or poisoned; config sizes set to absurd values) and of a GGUF exported from it go
through the loading path every command uses before its first forward pass
(``compressor.models.load_model``), in this process. Each one must either load with finite
weights of the shapes its files hold, or raise a UserError whose message is one line: never
another exception, never a hang. A few go through the real CLI (``svdc eval``) for the exit
code and the one line on stderr.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from compressor.errors import UserError

SEED = 25
PER_VARIANT_S = 20          # far above any variant's cost (tens of ms): a hang, not a slow load


class Hang(Exception):
    pass


def _alarm(*_):
    raise Hang


def outcome(load, path: Path) -> str:
    """"loaded" or "refused"; fails the test on anything else."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, PER_VARIANT_S)
    try:
        model, _, _ = load(str(path))
    except UserError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "\r" not in msg, f"not one line: {msg!r}"
        return "refused"
    except Hang:
        pytest.fail(f"loading {path} took more than {PER_VARIANT_S} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    _assert_valid(model, path)
    return "loaded"


def _assert_valid(model, path: Path) -> None:
    """Finite weights, each of the shape its file holds (a tied head counts through its
    source: named_parameters lists a shared tensor once)."""
    weights = path / "model.safetensors" if path.is_dir() else None
    shapes = {}
    if weights is not None:
        with safe_open(str(weights), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), f"{name} is not finite yet loaded"
        if weights is not None:
            assert name in shapes, f"{name} loaded though the file lacks it"
            assert tuple(p.shape) == shapes[name], f"{name}: {tuple(p.shape)} vs {shapes[name]}"


# ---------------------------------------------------------------- mutations

def _bytes_op(rng: random.Random, data: bytes, lo: int, hi: int) -> bytes:
    b = bytearray(data)
    i = rng.randrange(lo, hi)
    op = rng.choice(("flip", "byte", "truncate", "delete"))
    if op == "flip":
        b[i] ^= 1 << rng.randrange(8)
    elif op == "byte":
        b[i] = rng.randrange(256)
    elif op == "truncate":
        del b[i:]
    else:
        del b[i:i + rng.randint(1, 32)]
    return bytes(b)


def _tensor_op(rng: random.Random, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    t = dict(tensors)
    name = rng.choice(sorted(t))
    op = rng.choice(("drop", "reshape", "slice", "retype", "nan", "inf", "extra-layer",
                     "extra-tensor"))
    w = t[name]
    if op == "drop":
        del t[name]
    elif op == "reshape":
        t[name] = w.reshape(-1) if w.ndim > 1 else w.reshape(1, -1)
    elif op == "slice":
        t[name] = w[: max(1, w.shape[0] - rng.randint(1, 3))].clone()
    elif op == "retype":
        t[name] = w.to(rng.choice((torch.float16, torch.bfloat16, torch.float64, torch.int8)))
    elif op in ("nan", "inf"):
        w = w.clone()
        w.view(-1)[rng.randrange(w.numel())] = float(op)
        t[name] = w
    elif op == "extra-layer":   # a layer the config does not count
        for k in [k for k in t if ".layers.1." in k]:
            t[k.replace(".layers.1.", ".layers.2.")] = t[k].clone()
    else:
        t["model.unused.weight"] = torch.zeros(3)
    return t


_SIZE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
              "head_dim", "dtype", "tie_word_embeddings", "rms_norm_eps", "model_type",
              "architectures")
_ODD_VALUES = (0, -1, 1, 3, 7, 10 ** 6, 10 ** 9, 2 ** 63, 1.5, "64", None, True, [], {}, "x")


def _config_op(rng: random.Random, cfg: dict) -> dict:
    c = dict(cfg)
    key = rng.choice(_SIZE_KEYS)
    if rng.random() < 0.2:
        c.pop(key, None)
    else:
        c[key] = rng.choice(_ODD_VALUES)
    return c


def _variants(rng: random.Random, src: Path, scratch: Path, n: int):
    """(kind, {file name: bytes}) for ``n`` variants of the checkpoint in ``src``, a mix of
    every kind (``scratch``: a folder to write re-serialized tensors in)."""
    st_bytes = (src / "model.safetensors").read_bytes()
    cfg_bytes = (src / "config.json").read_bytes()
    header_end = 8 + struct.unpack("<Q", st_bytes[:8])[0]
    tensors = load_file(src / "model.safetensors")
    cfg = json.loads(cfg_bytes)
    kinds = ("st-header", "st-data", "st-any", "config-bytes", "tensors", "config-values")
    for k in range(n):
        kind = kinds[k % len(kinds)]
        if kind == "st-header":
            yield kind, {"model.safetensors": _bytes_op(rng, st_bytes, 0, header_end)}
        elif kind == "st-data":
            yield kind, {"model.safetensors": _bytes_op(rng, st_bytes, header_end, len(st_bytes))}
        elif kind == "st-any":
            yield kind, {"model.safetensors": _bytes_op(rng, st_bytes, 0, len(st_bytes))}
        elif kind == "config-bytes":
            yield kind, {"config.json": _bytes_op(rng, cfg_bytes, 0, len(cfg_bytes))}
        elif kind == "tensors":
            out = scratch / "fuzz-tensors.safetensors"
            save_file(_tensor_op(rng, tensors), str(out), metadata={"format": "pt"})
            yield kind, {"model.safetensors": out.read_bytes()}
        else:
            yield kind, {"config.json": json.dumps(_config_op(rng, cfg)).encode()}


# ---------------------------------------------------------------- the properties

def test_damaged_safetensors_checkpoints_load_as_data_or_are_refused_in_one_line(
        tiny_model_dir, tmp_path):
    import transformers

    from compressor.models import load_model
    transformers.logging.set_verbosity_error()
    folder = tmp_path / "variant"
    shutil.copytree(tiny_model_dir, folder)
    original = {n: (folder / n).read_bytes() for n in ("model.safetensors", "config.json")}
    rng = random.Random(SEED)
    seen: dict[tuple[str, str], int] = {}
    t0 = time.perf_counter()
    for kind, files in _variants(rng, tiny_model_dir, tmp_path, 360):
        for name, data in original.items():
            (folder / name).write_bytes(files.get(name, data))
        result = outcome(load_model, folder)
        seen[kind, result] = seen.get((kind, result), 0) + 1
    # the variants exercise both ways out, for every kind that can do both
    for kind in ("st-data", "tensors", "config-values", "config-bytes"):
        assert seen.get((kind, "loaded")) and seen.get((kind, "refused")), seen
    assert seen.get(("st-header", "refused")), seen
    assert time.perf_counter() - t0 < 60


@pytest.fixture(scope="module")
def tiny_gguf(prior_output, tmp_path_factory) -> Path:
    """A GGUF transformers loads: the earlier RTN output exported as Q4_0 blocks."""
    pytest.importorskip("gguf")
    from compressor.checkpoint.gguf_export import export_gguf
    return export_gguf(prior_output, tmp_path_factory.mktemp("gguf") / "m.gguf")


def test_damaged_gguf_files_load_as_data_or_are_refused_in_one_line(tiny_gguf, tmp_path):
    """Mostly its header (metadata and tensor table: where counts and sizes live)."""
    import gguf
    import transformers

    from compressor.models import load_model
    transformers.logging.set_verbosity_error()
    data = tiny_gguf.read_bytes()
    header_end = gguf.GGUFReader(str(tiny_gguf)).data_offset
    rng = random.Random(SEED)
    variant = tmp_path / "v.gguf"
    seen = {"loaded": 0, "refused": 0}
    for k in range(120):
        hi = header_end if k % 6 else len(data)
        variant.write_bytes(_bytes_op(rng, data, 0, hi))
        seen[outcome(load_model, variant)] += 1
    assert seen["loaded"] and seen["refused"], seen


# ---------------------------------------------------------------- through the real CLI

def _cli(*args) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([sys.executable, "-m", "compressor", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_damaged_checkpoints_through_svdc_eval_exit_2_with_one_line(tiny_model_dir, tiny_gguf,
                                                                     tmp_path):
    nan = tmp_path / "nan"
    shutil.copytree(tiny_model_dir, nan)
    t = load_file(nan / "model.safetensors")
    t["model.layers.0.mlp.up_proj.weight"][1, 2] = float("nan")
    save_file(t, str(nan / "model.safetensors"), metadata={"format": "pt"})
    shape = tmp_path / "shape"
    shutil.copytree(tiny_model_dir, shape)
    cfg = json.loads((shape / "config.json").read_text())
    cfg["intermediate_size"] += 1
    (shape / "config.json").write_text(json.dumps(cfg))
    huge = tmp_path / "huge.gguf"
    g = tiny_gguf.read_bytes()
    huge.write_bytes(g[:8] + struct.pack("<QQ", 2 ** 40, 2 ** 40) + g[24:])
    cases = [(nan, "holds NaN or Inf in model.layers.0.mlp.up_proj.weight"),
             (shape, "has 6 tensor(s) of the wrong shape"),
             (huge, "its header claims 1099511627776 tensors")]
    for model, words in cases:
        r = _cli("eval", model, "--seqlen", "16", "--max-windows", "1")
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2, r.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.stderr
