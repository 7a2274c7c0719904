"""Recipes: the schema (typed stages), reading/writing YAML, and routing flags into stages."""

from compressor.recipe.io import (
           dump_recipe,
           load_recipe,
           parse_recipe,
           read_recipe_data,
)
from compressor.recipe.router import (
           parse_set,
           route_flags,
           stages_from_flags,
           with_heal,
)
from compressor.recipe.schema import Recipe

__all__ = ["dump_recipe", "load_recipe", "parse_recipe", "read_recipe_data", "parse_set",
           "route_flags", "stages_from_flags", "with_heal", "Recipe"]
