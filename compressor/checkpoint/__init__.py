"""Checkpoint I/O: save (write a compressed folder), load (rebuild it), export (dense or
PEFT adapter for tools that do not know svdc)."""

from .export import densify, export_dense, export_peft_adapter
from .load import is_compressed_folder, load_compressed, read_weights
from .save import (
           FORMAT,
           FORMAT_VERSION,
           compressed_modules,
           round_uncompressed,
           save_compressed,
)

__all__ = ["densify", "export_dense", "export_peft_adapter", "is_compressed_folder",
           "load_compressed", "read_weights", "FORMAT", "FORMAT_VERSION", "compressed_modules",
           "round_uncompressed", "save_compressed"]
