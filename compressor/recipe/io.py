"""Read, parse and write recipes; every validation problem becomes one line naming the key
and, for a typo, the nearest valid key."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from compressor.core.registry import stage_class
from compressor.errors import UserError
from compressor.recipe.schema import Recipe


def explain(err: ValidationError, valid_keys: list[str] | None = None, loc_offset: int = 0) -> str:
    """The first validation problem as one line, with the nearest valid key for a typo."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"][loc_offset:])
    if e["type"] == "extra_forbidden":
        key = str(e["loc"][-1])
        near = difflib.get_close_matches(key, valid_keys or [], n=1)
        hint = (f"; did you mean '{near[0]}'?" if near
                else f"; valid keys: {', '.join(valid_keys or [])}")
        return f"unknown key '{loc}'{hint}"
    if e["type"] == "missing":
        return f"missing required key '{loc}'"
    return f"'{loc}': {e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})"


def _valid_keys_at(loc: tuple) -> list[str]:
    """The keys a (nested) recipe section accepts, for the 'did you mean' hint."""
    model: Any = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
            continue
        sub = next((a for a in getattr(ann, "__args__", ())
                    if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            return []
        model = sub
    return [k for k in model.model_fields]


def _stage_message(err: ValidationError) -> str | None:
    """'stage N (method): ...' for an error inside a stage's config, else None."""
    loc = err.errors()[0]["loc"]
    if len(loc) < 3 or loc[0] != "stages" or not isinstance(loc[1], int):
        return None
    method = str(loc[2])
    keys = [k for k in stage_class(method).Config.model_fields if k != "method"]
    return f"stage {loc[1] + 1} ({method}): {explain(err, keys, loc_offset=3)}"


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """Validate a recipe mapping once; a UserError naming the first problem otherwise."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe must be a YAML mapping (version, model, stages, ...)")
    try:
        return Recipe(**data)
    except ValidationError as e:
        first = e.errors()[0]
        msg = first.get("msg", "")
        if first["type"] == "value_error" and "stage" in msg:
            raise UserError(f"{source}: {msg.removeprefix('Value error, ')}") from None
        stage = _stage_message(e)
        if stage is not None:
            raise UserError(f"{source}: {stage}") from None
        raise UserError(f"{source}: {explain(e, _valid_keys_at(first['loc']))}") from None


def read_recipe_data(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a recipe file (flags may still be routed into it before parsing)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe file not found: {p} (check the path)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: a recipe must be a YAML mapping (version, model, stages, ...)")
    return data


def load_recipe(path: str | Path) -> Recipe:
    return parse_recipe(read_recipe_data(path), str(path))


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (every stage option written out)."""
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=False), sort_keys=False)
