"""Architecture map: where a model keeps its decoder layers, and which linears of a layer are
targets, in execution order."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

from torch import nn

from compressor.errors import UserError

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
