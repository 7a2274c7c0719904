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

MAX_BYTES = 1 << 20   # shipped recipes are ~1.5 KB: a bigger file is the wrong file (or an attack)
MAX_DEPTH = 32        # recipes nest 4 levels; PyYAML's composer recurses once per level


class _Refused(yaml.MarkedYAMLError):
    """YAML that no recipe needs, refused before it costs memory, time or stack."""


class _RecipeLoader(yaml.SafeLoader):
    """safe_load without aliases (a 'billion laughs' bomb expands exponentially; no shipped
    recipe uses one) and without deep nesting (RecursionError in the composer)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(None, None, f"YAML alias '*{event.anchor}' is not allowed in a "
                           f"recipe; write the value out", event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels",
                           event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str | bytes, source: str) -> Any:
    """Recipe YAML (a file, a --set value) as Python data; a one-line UserError otherwise."""
    try:
        return yaml.load(text, Loader=_RecipeLoader)   # safe: a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "refused" if isinstance(e, _Refused) else "not valid YAML"
        why = " ".join(str(getattr(e, "problem", None) or e).split())   # one line
        raise UserError(f"{source}: {what}{where}: {why}") from None


def _first(err: ValidationError) -> dict:
    """The problem to report: an unknown key first, since a misspelled key ('stagse') also
    makes its correct spelling 'missing', and the typo is the one to name."""
    errors = err.errors()
    return next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])


def explain(err: ValidationError, valid_keys: list[str] | None = None, loc_offset: int = 0) -> str:
    """The problem `_first` picks as one line, with the nearest valid key for a typo."""
    e = _first(err)
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
    loc = _first(err)["loc"]
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
        first = _first(e)
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
    with p.open("rb") as f:
        raw = f.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise UserError(f"{p}: larger than {MAX_BYTES >> 20} MiB; a recipe is a few KB "
                        f"(check the path)")
    data = load_yaml(raw, str(p))
    if not isinstance(data, dict):
        raise UserError(f"{p}: a recipe must be a YAML mapping (version, model, stages, ...)")
    return data


def load_recipe(path: str | Path) -> Recipe:
    return parse_recipe(read_recipe_data(path), str(path))


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (every stage option written out)."""
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=False), sort_keys=False)
