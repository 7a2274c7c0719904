"""Recipes: a YAML file (or the flags it amounts to) validated by pydantic, typos rejected.

A recipe is everything needed to reproduce an output: model, calibration data, the list
of stages with every parameter resolved, evaluation and optional expectations that CI
checks. ``svdc compress`` with plain flags writes the recipe it amounts to.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import UserError
from .methods import REGISTRY, get_method

RECIPE_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Calibration(_Strict):
    dataset: str = Field("builtin", description="wikitext2, c4, builtin, or a .txt/.jsonl path")
    nsamples: int = Field(128, ge=1, description="number of calibration windows")
    seqlen: int = Field(2048, ge=8, description="tokens per calibration window")
    seed: int = Field(0, description="drives sampling and every randomized routine")


class Gradients(_Strict):
    nsamples: int | None = Field(None, ge=1, description="windows for the backward pass (default: all calibration windows)")
    fisher_file: str | None = Field(None, description="reuse gradient statistics saved earlier (safetensors)")


class Targets(_Strict):
    include: list[str] | None = Field(None, description="glob patterns of linears to compress (relative to a decoder layer)")
    exclude: list[str] | None = Field(None, description="glob patterns of linears to leave dense")


class Evaluation(_Strict):
    datasets: list[str] = Field(default_factory=lambda: ["builtin"])
    seqlen: int | None = Field(None, ge=8, description="default: the calibration seqlen, capped by the model's context")
    max_windows: int | None = Field(None, ge=1, description="score only this many windows (the result is labelled partial)")


class Expectation(_Strict):
    value: float
    tol: float = Field(..., ge=0, description="absolute tolerance")


class Recipe(_Strict):
    version: int = RECIPE_VERSION
    model: str | None = None
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description=(
        "compute dtype of the model during calibration and evaluation (auto: the checkpoint's "
        "own on CUDA, float32 on CPU)"))
    storage_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description=(
        "dtype written for factors, dictionaries and uncompressed tensors (auto: the "
        "checkpoint's own, so a bfloat16 model stays bfloat16 even when computed in float32)"))
    calibration: Calibration = Field(default_factory=Calibration)
    gradients: Gradients = Field(default_factory=Gradients)
    targets: Targets = Field(default_factory=Targets)
    stages: list[dict[str, Any]] = Field(..., min_length=1)
    output: str | None = None
    eval: Evaluation | None = None
    expect: dict[str, Expectation] = Field(default_factory=dict)

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != RECIPE_VERSION:
            raise ValueError(f"recipe version {v} is not supported (this svdc reads version {RECIPE_VERSION})")
        return v

    @field_validator("stages")
    @classmethod
    def _stages(cls, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [resolve_stage(s, i) for i, s in enumerate(stages)]


def resolve_stage(stage: Any, index: int = 0) -> dict[str, Any]:
    """Validate one stage mapping against its method's config; return it fully resolved."""
    if not isinstance(stage, dict) or "method" not in stage:
        raise ValueError(f"stage {index + 1} must be a mapping with a 'method' key, e.g. "
                         f"{{method: gptq, bits: 4}}")
    params = {k: v for k, v in stage.items() if k != "method"}
    name = stage["method"]
    if name not in REGISTRY:
        get_method(name)  # raises a UserError with the nearest name
    cfg_cls = REGISTRY[name].Config
    try:
        cfg = cfg_cls(**params)
    except ValidationError as e:
        raise ValueError(f"stage {index + 1} ({name}): {explain(e, list(cfg_cls.model_fields))}") from None
    return {"method": name, **cfg.model_dump(mode="json")}


def explain(err: ValidationError, valid_keys: list[str] | None = None) -> str:
    """The first validation problem as one line, with the nearest valid key for a typo."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        key = str(e["loc"][-1])
        near = difflib.get_close_matches(key, valid_keys or [], n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(valid_keys or [])}"
        return f"unknown key '{loc}'{hint}"
    if e["type"] == "missing":
        return f"missing required key '{loc}'"
    return f"'{loc}': {e['msg']} (got {e.get('input')!r})"


def _valid_keys_at(loc: tuple) -> list[str]:
    model: Any = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            ann = getattr(field, "annotation", None)
            args = getattr(ann, "__args__", ()) if ann is not None else ()
            sub = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if sub is None:
                return []
            model = sub
        else:
            model = field.annotation
    return list(model.model_fields)


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe must be a YAML mapping (version, model, stages, ...)")
    try:
        return Recipe(**data)
    except ValidationError as e:
        first = e.errors()[0]
        msg = first.get("msg", "")
        if first["type"] == "value_error" and "stage" in msg:
            raise UserError(f"{source}: {msg.removeprefix('Value error, ')}") from None
        raise UserError(f"{source}: {explain(e, _valid_keys_at(first['loc']))}") from None


def load_recipe(path: str | Path) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe file not found: {p} (check the path)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    return parse_recipe(data, str(p))


def dump_recipe(recipe: Recipe) -> str:
    data = recipe.model_dump(mode="json", exclude_none=False)
    return yaml.safe_dump(data, sort_keys=False)
