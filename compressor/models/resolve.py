"""Turn MODEL (alias, folder, .gguf file or Hub id) into files on disk, fetching from the Hub
if needed.

Everything here fails with a one-line UserError naming the problem and the fix: a bad path
or an unreachable Hub is the most common way a run goes wrong. Cache: the cache_dir
argument, else env SVDC_CACHE, else platformdirs' user_cache_dir("svdc"); Hub downloads use
the Hugging Face cache (HF_HOME), shared with other tools.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import snapshot_download

from compressor.errors import UserError

from .aliases import ALIASES, ResolvedModel
from .gguf_header import check_gguf_file
from .integrity import check_config, stored_layers, weights_table
from .offline import resolve_offline

log = logging.getLogger(__name__)


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


def resolve_model(spec: str, cache_dir: str | Path | None = None,
                  verify: bool = True) -> ResolvedModel:
    """Turn MODEL (alias, folder, .gguf file or Hub id) into files on disk, fetching if needed.

    ``verify=False`` skips the sha256 check of an offline alias's cached conversion
    (offline.py); header checks of weight files always run."""
    spec = str(spec).strip()
    if not spec:
        raise UserError("no model given: pass an alias (e.g. smollm2-135m), a folder, a .gguf "
                        "file or a Hugging Face Hub id")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    alias = ALIASES.get(spec.lower())
    if alias is not None:
        if alias.offline is not None:
            return resolve_offline(alias, cache, verify=verify)
        return _resolve_hub(alias.hub_id, cache, verify)

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
    return _resolve_hub(spec, cache, verify)


def _resolve_local(path: Path) -> ResolvedModel:
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(f"'{path}' is a file but not a .gguf: pass the checkpoint folder "
                            "(with config.json) or a .gguf file")
        check_gguf_file(path)
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
    check_folder(path)
    return ResolvedModel(path.resolve(), None, "local", None)


def check_folder(path: Path) -> None:
    """The header checks of the weight files, and config.json against them (sizes, layer
    count, a size far beyond what the files hold): what every loader, streamed included,
    gets before transformers builds anything. The memory bound is load_model's (a streamed
    run is meant for models larger than memory)."""
    data_bytes, names = weights_table(path)
    check_config(path, None, data_bytes, stored_layers(names))


# Config, tokenizer and safetensors only: never pickled .bin weights, never Python files (a
# model loads as data), never the duplicate "original/" or "consolidated" checkpoints some
# repos ship beside the HF one.
HUB_ALLOW = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "merges.txt",
             "vocab.txt", "*.jinja"]


HUB_IGNORE = ["original/*", "consolidated*", "*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack",
              "*.py", "*.pkl", "*.pickle"]


def _unreachable(exc: BaseException) -> bool:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError,
                        TimeoutError)):
        return True
    # The HTTP client's own transport errors (httpx / requests), matched by name so that this
    # works whichever client huggingface_hub uses.
    return any(re.search(r"Connect|Timeout|Transport|Network|Resolve", c.__name__)
               for c in type(exc).__mro__)


def _resolve_hub(hub_id: str, cache: Path, verify: bool = True) -> ResolvedModel:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
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
            res = resolve_offline(fallback, cache, verify=verify)
            res.source += " (hub unreachable)"
            return res
        raise UserError(f"cannot reach the Hugging Face Hub for '{hub_id}': pass a local "
                        "folder, a .gguf file, or an offline alias such as smollm2-135m") from e
    if not list(folder.glob("*.safetensors")):
        raise UserError(f"'{hub_id}' has no safetensors weights on the Hub: svdc never loads "
                        "pickled .bin files; convert the checkpoint and pass the folder")
    check_folder(folder)
    return ResolvedModel(folder, None, "hub", hub_id)
