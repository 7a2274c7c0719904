"""Per-layer checkpoints so a crashed or interrupted run picks up where it stopped.

Each finished decoder layer's compressed modules go to ``layer_XXXX.safetensors`` plus a
JSON of their specs and report rows (written last, so its presence marks the layer done).
A fingerprint of model, calibration data and resolved recipe guards against resuming
someone else's run: it is stored in the folder and in every layer's JSON, and checked for
each layer loaded, so a layer written by another run is refused with the file named; a
corrupt checkpoint file is refused the same way (the fix: drop --resume).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from compressor.atomic import atomic_write_text
from compressor.core.layer_io import set_submodule
from compressor.core.types import ModuleRecord
from compressor.errors import UserError
from compressor.parts import CompressedLinear
from compressor.safetensors_io import Entry, tensor_entry, write_safetensors
from compressor.safety.interrupt import note_checkpoints
from compressor.safety.links import check_own_path

FINGERPRINT = "fingerprint.json"

# one metadata key only: a second one would add nothing and every svdc weight file carries it
WEIGHT_META = {"format": "pt"}


def fingerprint(model_info: dict[str, Any], windows: torch.Tensor, recipe_json: str, version: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(model_info, sort_keys=True, default=str).encode())
    h.update(windows.cpu().numpy().tobytes())
    h.update(recipe_json.encode())
    h.update(version.encode())
    return h.hexdigest()


def resume_dir_for(output: Path) -> Path:
    return output.parent / f".{output.name}.resume"


class LayerCheckpoints:
    def __init__(self, folder: Path, fp: str, resume: bool, storage_dtype: torch.dtype):
        self.folder = folder
        self.fp = fp
        self.storage_dtype = storage_dtype
        self.resumed_layers = 0
        marker = folder / FINGERPRINT
        check_own_path(folder, "folder")            # a planted link: refused, not deleted
        if folder.exists() and resume:
            _refuse_links_inside(folder)
            if not marker.is_file():
                raise UserError(f"cannot resume: {folder} holds no fingerprint; rerun without --resume")
            old = _read_json(marker).get("fingerprint")
            if not isinstance(old, str):
                raise _corrupt(marker, "no fingerprint in it")
            if old != fp:
                raise UserError(f"cannot resume: the checkpoints in {folder} were made with a different "
                                f"model, calibration data or recipe (fingerprint {old[:12]} != {fp[:12]}); "
                                f"rerun without --resume to start over")
        elif resume:
            raise UserError(f"cannot resume: no checkpoints at {folder}; rerun without --resume")
        else:
            _fresh_folder(folder)
        atomic_write_text(marker, json.dumps({"fingerprint": fp}))
        note_checkpoints(folder)

    def _paths(self, i: int) -> tuple[Path, Path]:
        return self.folder / f"layer_{i:04d}.safetensors", self.folder / f"layer_{i:04d}.json"

    def save_layer(self, i: int, layer: nn.Module, prefix: str, records: list[ModuleRecord],
                   rels: list[str]) -> None:
        """Layer i as it will be written: every tensor of the layer under its full name
        (``prefix`` + key; tensors outside the compressed linears in ``self.storage_dtype``),
        then its specs and report rows. A streamed run's writer takes these files as the
        output's layer shards (checkpoint/save.py), byte for byte what writing the layer
        from memory gives."""
        tpath, jpath = self._paths(i)
        specs = {}
        for rel in rels:
            mod = layer.get_submodule(rel)
            assert isinstance(mod, CompressedLinear)
            specs[rel] = mod.spec()
        tmp = tpath.with_name(tpath.name + ".tmp")
        write_safetensors(tmp, layer_entries(layer, prefix, self.storage_dtype), WEIGHT_META)
        os.replace(tmp, tpath)
        atomic_write_text(jpath, json.dumps({"fingerprint": self.fp, "prefix": prefix,
                                             "specs": specs,
                                             "records": [r.to_dict() for r in records]}))

    def layer_file(self, i: int) -> Path:
        return self._paths(i)[0]

    def layer_meta(self, i: int) -> dict[str, Any]:
        return _read_json(self._paths(i)[1])

    def load_layer(self, i: int, layer: nn.Module, device: torch.device,
                   dtype: torch.dtype) -> list[ModuleRecord] | None:
        """Layer i's compressed linears (parts in ``dtype``) put into ``layer``, and their
        report rows; None when layer i has no checkpoint."""
        tpath, jpath = self._paths(i)
        if not jpath.is_file():
            return None
        meta = _read_json(jpath)
        if meta.get("fingerprint") != self.fp:
            # each layer carries its own fingerprint: a folder that another run (other ratio,
            # model or data) wrote into is caught layer by layer, not only once per folder
            raise UserError(f"cannot resume: {jpath} was made by a different run (other model, "
                            f"calibration data or recipe); rerun without --resume to start over")
        try:
            tensors = load_file(str(tpath))
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: all mean a bad file
            raise _corrupt(tpath, f"{type(e).__name__}: {e}") from None
        try:
            prefix = meta["prefix"]
            for rel, spec in meta["specs"].items():
                mod = CompressedLinear.from_spec(spec, dtype)
                head = prefix + rel + "."
                mod.load_state_dict({k[len(head):]: v for k, v in tensors.items()
                                     if k.startswith(head)}, strict=True)
                set_submodule(layer, rel, mod.to(device))
            out = []
            for r in meta["records"]:
                r["shape"] = tuple(r["shape"])
                out.append(ModuleRecord(**r))
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise _corrupt(jpath, f"{type(e).__name__}: {e}") from None
        self.resumed_layers += 1
        return out

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _fresh_folder(folder: Path) -> None:
    """An empty folder made by this run: an earlier run's is deleted (it is a real folder,
    checked), then the name is created exclusively, so nothing planted meanwhile is used."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir()


def _refuse_links_inside(folder: Path) -> None:
    """A resumed folder is read and written into: a link in it would be followed."""
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            if os.path.islink(os.path.join(root, name)):
                raise UserError(f"cannot resume: {os.path.join(root, name)} is a symbolic link; "
                                f"svdc never follows links in its resume folder: rerun without "
                                f"--resume to start over")


def discard_unfinished(folder: Path) -> bool:
    """After a failed run: drop the resume folder unless a layer in it is finished (then
    --resume continues from it), so an early failure strands nothing. Never a link."""
    if folder.is_symlink() or not folder.is_dir() or any(folder.glob("layer_*.json")):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def layer_entries(layer: nn.Module, prefix: str, storage_dtype: torch.dtype) -> list[Entry]:
    """A layer's tensors as written: full names; the compressed linears' parts in their own
    dtypes, every other floating tensor (norms, uncompressed linears) in ``storage_dtype``."""
    inside = tuple(rel + "." for rel, mod in layer.named_modules()
                   if isinstance(mod, CompressedLinear))
    out = []
    for k, t in layer.state_dict().items():
        t = t.detach().to("cpu")
        if t.is_floating_point() and not k.startswith(inside):
            t = t.to(storage_dtype)
        out.append(tensor_entry(prefix + k, t))
    return out


def _corrupt(path: Path, why: str) -> UserError:
    first = (why.strip().splitlines() or [why])[0]
    return UserError(f"cannot resume: checkpoint {path} is corrupt ({first}); rerun without "
                     f"--resume to start over")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _corrupt(path, str(e)) from None
    if not isinstance(data, dict):
        raise _corrupt(path, "not a JSON mapping")
    return data
