"""Load a resolved model with transformers, safetensors only, and describe what was loaded for
the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.errors import UserError
from compressor.safety.remote_code import check_remote_code

from .architectures import decoder_layers
from .device import checkpoint_dtype, resolve_device, resolve_dtype
from .integrity import CONFIG_ERRORS, check_config, check_loaded, file_sha256
from .offline import drop_quantizer
from .resolve import resolve_model


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


def load_model(spec: str, dtype: str | torch.dtype = "auto", device: str = "cpu",
               cache_dir: str | Path | None = None,
               compute_device: str | torch.device | None = None,
               trust_remote_code: bool = False) -> tuple[nn.Module, Any, ModelInfo]:
    """Resolve MODEL and load it with transformers; returns (model, tokenizer, ModelInfo).

    ``compute_device`` (default: ``device``) decides what dtype "auto" means: a model kept
    on the CPU but compressed on a GPU loads in its own half precision, not float32.
    The model loads as data: no code from its folder (unless ``trust_remote_code``), no
    pickle (safetensors or GGUF only).
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    res = resolve_model(spec, cache_dir=cache_dir)
    dev = resolve_device(device)
    if not res.gguf_file:
        check_remote_code(res.path, trust_remote_code)
    kw: dict[str, Any] = {"gguf_file": res.gguf_file} if res.gguf_file else {}
    kw["trust_remote_code"] = bool(trust_remote_code)
    from compressor.safety.memory import available_bytes
    check_config(res.path, available_bytes())
    try:
        config = AutoConfig.from_pretrained(res.path, **kw)
    except (OSError, *CONFIG_ERRORS) as e:
        raise UserError(f"cannot read the model config in '{res.path}': {_flat(e)}") from e
    torch_dtype = resolve_dtype(dtype, config, resolve_device(compute_device) if compute_device else dev)
    tokenizer = load_tokenizer(res.path, **kw)
    try:
        model, loading = AutoModelForCausalLM.from_pretrained(
            res.path, dtype=torch_dtype, low_cpu_mem_usage=True, output_loading_info=True,
            **({} if res.gguf_file else {"use_safetensors": True}), **kw)
    except Exception as e:  # noqa: BLE001 - turn a corrupt file into a one-line UserError
        name = type(e).__name__
        if "Safetensor" in name or "Header" in str(e) or isinstance(e, (EOFError, OSError)):
            raise UserError(f"cannot load weights from '{res.path}' ({name}: {_first_line(e)}): "
                            "a file is corrupt or truncated; download it again") from e
        if isinstance(e, ValueError) and "model type" in str(e).lower():
            raise UserError(f"'{spec}' is not a causal LM that transformers knows: "
                            f"{_first_line(e)}") from e
        if isinstance(e, CONFIG_ERRORS):
            raise UserError(f"cannot build the model from '{res.path}/config.json' "
                            f"({name}: {_flat(e)}): a config field is missing or has the "
                            f"wrong type; fix config.json or download the checkpoint again") from e
        raise
    check_loaded(model, loading, res.path)
    if res.gguf_file:
        drop_quantizer(model)
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


def load_tokenizer(path: str | Path, **kw: Any) -> Any:
    """The tokenizer beside a checkpoint's config, or a one-line error naming the fix."""
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(path, **kw)
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"cannot load the tokenizer from '{path}' ({_first_line(e)}): put "
                        "the tokenizer files (tokenizer.json, tokenizer_config.json) beside "
                        "config.json") from e


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _flat(e: BaseException) -> str:
    """The whole message on one line (a validation error spans several)."""
    return " ".join(str(e).split()) or type(e).__name__
