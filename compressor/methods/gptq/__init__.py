"""GPTQ: group-wise quantization with second-order error feedback from the layer's inputs."""

from .config import GPTQConfig
from .method import GPTQ

__all__ = ["GPTQConfig", "GPTQ"]
