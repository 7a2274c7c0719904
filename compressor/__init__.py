"""svdc: post-training compression of Hugging Face causal language models."""

__version__ = "0.1.0"


def load(path, device="cpu", dtype=None, verify=True):
    """Load a compressed checkpoint folder written by ``svdc compress`` (see checkpoint.py).
    ``verify=False`` skips the sha256 check of the weight files (faster for large models)."""
    from compressor.checkpoint import load_compressed
    return load_compressed(path, device=device, dtype=dtype, verify=verify)
