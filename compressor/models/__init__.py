"""Models: resolve MODEL to files, check them, load them, and find their decoder layers.

One job a file: aliases (names and offline sources), resolve (alias/folder/.gguf/Hub id to
files), offline (PyPI wheel -> GGUF -> safetensors), integrity (weight-file and config
checks), gguf_header (a GGUF header walked with bounds), device
(device and dtypes), load (transformers loading), architectures (layers and target linears).
"""

from .aliases import ALIASES, Alias, OfflineSource, ResolvedModel
from .architectures import (
           decoder_layers,
           embedding_and_head,
           linear_kind,
           target_linears,
)
from .device import DTYPES, resolve_device, resolve_dtype, resolve_storage_dtype
from .load import ModelInfo, load_model
from .resolve import default_cache_dir, resolve_model

__all__ = ["ALIASES", "Alias", "OfflineSource", "ResolvedModel", "decoder_layers",
           "embedding_and_head", "linear_kind", "target_linears", "DTYPES", "resolve_device",
           "resolve_dtype", "resolve_storage_dtype", "ModelInfo", "load_model",
           "default_cache_dir", "resolve_model"]
