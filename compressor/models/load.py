"""Load a resolved model with transformers, safetensors only, and describe what was loaded for
the report."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.errors import UserError
from compressor.safety.remote_code import check_remote_code

from .architectures import decoder_layers
from .device import checkpoint_dtype, resolve_device, resolve_dtype
from .gguf_header import check_gguf_file
from .integrity import (
    CONFIG_ERRORS,
    check_config,
    check_config_dict,
    check_loaded,
    file_sha256,
    stored_layers,
    weights_table,
)
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
               trust_remote_code: bool = False,
               verify: bool = True) -> tuple[nn.Module, Any, ModelInfo]:
    """Resolve MODEL and load it with transformers; returns (model, tokenizer, ModelInfo).

    ``compute_device`` (default: ``device``) decides what dtype "auto" means: a model kept
    on the CPU but compressed on a GPU loads in its own half precision, not float32.
    The model loads as data: no code from its folder (unless ``trust_remote_code``), no
    pickle (safetensors or GGUF only). ``verify=False`` skips the sha256 check of an
    offline alias's cached conversion (resolve_model); the other checks always run.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    res = resolve_model(spec, cache_dir=cache_dir, verify=verify)
    dev = resolve_device(device)
    if not res.gguf_file:
        check_remote_code(res.path, trust_remote_code)
    kw: dict[str, Any] = {"gguf_file": res.gguf_file} if res.gguf_file else {}
    kw["trust_remote_code"] = bool(trust_remote_code)
    from compressor.safety.memory import available_bytes
    if res.gguf_file:
        gguf = res.path / res.gguf_file
        table = check_gguf_file(gguf)
        try:   # transformers' GGUF reader parses data from a stranger: any failure is the file's
            config = AutoConfig.from_pretrained(res.path, **kw)
        except Exception as e:  # noqa: BLE001 - one line naming the file
            raise UserError(f"cannot read the model config from '{gguf}' ({type(e).__name__}: "
                            f"{_flat(e)[:200]}): the file is corrupt or not a model GGUF; download it "
                            "again") from e
        check_config_dict(config.to_dict(), f"the metadata of '{gguf}'", "download it again",
                          available_bytes(), table.data_bytes, table.layers)
    else:
        data_bytes, names = weights_table(res.path)
        check_config(res.path, available_bytes(), data_bytes, stored_layers(names))
        try:
            config = AutoConfig.from_pretrained(res.path, **kw)
        except (OSError, *CONFIG_ERRORS) as e:
            raise UserError(f"cannot read the model config in '{res.path}': {_flat(e)}") from e
    torch_dtype = resolve_dtype(dtype, config, resolve_device(compute_device) if compute_device else dev)
    tokenizer = load_tokenizer(res.path, **kw)
    report = _HeldReport()
    try:
        with report:
            model, loading = AutoModelForCausalLM.from_pretrained(
                res.path, dtype=torch_dtype, low_cpu_mem_usage=True, output_loading_info=True,
                # a wrong-shaped tensor is then listed in the loading info, and check_loaded
                # refuses it in one line (else transformers raises after its report)
                ignore_mismatched_sizes=True,
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
        if isinstance(e, RuntimeError) and str(e).startswith(_STATE_DICT_ERRORS):
            raise UserError(f"cannot load weights from '{res.path}' ({_first_line(e)}): the "
                            "checkpoint does not match its config.json; download it again") from e
        if res.gguf_file:   # transformers' GGUF reader on a stranger's bytes: the file's fault
            raise UserError(f"cannot load weights from '{res.path / res.gguf_file}' ({name}: "
                            f"{_flat(e)[:200]}): the file is corrupt; download it again") from e
        raise
    check_loaded(model, loading, res.path)
    report.release()   # whole: what transformers had to say (an ignored extra tensor) is shown
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


# what transformers raises, after its load report, for a checkpoint it could not apply
_STATE_DICT_ERRORS = ("Error(s) in loading state_dict",
                      "We encountered some issues during automatic conversion")


class _HeldReport(logging.Filter):
    """Holds transformers' LOAD REPORT (a table of missing / mismatched keys) while loading:
    a checkpoint check_loaded refuses gets svdc's one line instead; one it accepts gets the
    report after all (``release``)."""

    LOGGER = "transformers.modeling_utils"

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in str(record.msg):
            self.held.append(record)
            return False
        return True

    def __enter__(self) -> "_HeldReport":
        logging.getLogger(self.LOGGER).addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger(self.LOGGER).removeFilter(self)

    def release(self) -> None:
        logger = logging.getLogger(self.LOGGER)
        for record in self.held:
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
        self.held.clear()


def load_tokenizer(path: str | Path, **kw: Any) -> Any:
    """The tokenizer beside a checkpoint's config, or a one-line error naming the fix."""
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(path, **kw)
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"cannot load the tokenizer from '{path}' ({_first_line(e)}): put "
                        "the tokenizer files (tokenizer.json, tokenizer_config.json) beside "
                        "config.json") from e
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises bare Exception
        what = (f"'{Path(path) / kw['gguf_file']}' is" if kw.get("gguf_file")
                else "its tokenizer files are")
        raise UserError(f"cannot load the tokenizer from '{path}' ({type(e).__name__}: "
                        f"{_flat(e)[:200]}): {what} corrupt; download them again") from e


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _flat(e: BaseException) -> str:
    """The whole message on one line (a validation error spans several)."""
    return " ".join(str(e).split()) or type(e).__name__
