"""svdc: post-training compression of Hugging Face causal language models."""

__version__ = "0.1.0"


def load(path, device="cpu", dtype=None, verify=True, stream=False):
    """Load a compressed checkpoint folder written by ``svdc compress`` (see checkpoint.py).
    ``verify=False`` skips the sha256 check of the weight files (faster for large models).
    ``stream=True``: for a model larger than RAM (also takes a plain safetensors folder): the
    decoder layers stay on disk and each is read just before its forward and freed after
    (checkpoint/stream_load.py); place it with ``device`` here, not ``model.to``."""
    if stream:
        from compressor.checkpoint.stream_load import load_streamed
        return load_streamed(path, device=device, dtype=dtype, verify=verify)
    from compressor.checkpoint import load_compressed
    return load_compressed(path, device=device, dtype=dtype, verify=verify)
