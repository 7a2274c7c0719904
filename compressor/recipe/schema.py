"""The recipe: everything needed to reproduce an output, as one validated pydantic object.

``stages`` is a discriminated union keyed on ``method``: each stage IS its method's config
object (``GPTQConfig``, ``EoraConfig``, ...), validated once here and handed unchanged to
the method. ``svdc compress`` with plain flags writes the recipe it amounts to.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

from compressor.core.registry import config_classes, stage_class
from compressor.core.stage_rules import check_stage_order
from compressor.data import is_random_source

RECIPE_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Calibration(_Strict):
    dataset: str = Field("builtin", description=(
        "wikitext2, c4, builtin, a .txt/.jsonl path, or random (seeded uniform token ids: no "
        "text, for data-free runs)"))
    nsamples: int = Field(128, ge=1, description="number of calibration windows")
    seqlen: int = Field(2048, ge=8, description="tokens per calibration window")
    seed: int = Field(0, description="drives sampling and every randomized routine")


class Gradients(_Strict):
    nsamples: int | None = Field(None, ge=1, description=(
        "windows for the backward pass (default: all calibration windows)"))
    fisher_file: str | None = Field(None, description=(
        "reuse gradient statistics saved earlier (safetensors)"))


class Targets(_Strict):
    include: list[str] | None = Field(None, description=(
        "glob patterns of linears to compress (relative to a decoder layer)"))
    exclude: list[str] | None = Field(None, description="glob patterns of linears to leave dense")


class Evaluation(_Strict):
    datasets: list[str] = Field(default_factory=lambda: ["builtin"])
    seqlen: int | None = Field(None, ge=8, description=(
        "default: the calibration seqlen, capped by the model's context"))
    max_windows: int | None = Field(None, ge=1, description=(
        "score only this many windows (the result is labelled partial)"))
    split: Literal["all", "test"] | None = Field(None, description=(
        "what a local file contributes: all its documents, or its held-out 10% test share "
        "(default: test when it is also the calibration file, else all; named sources always "
        "use their test split)"))
    tasks: list[str] = Field(default_factory=list, description=(
        "lm-evaluation-harness tasks (names or task YAML paths) run on the compressed model; "
        "needs the eval extra"))
    task_limit: int | None = Field(None, ge=1, description=(
        "examples per task (quick, partial run)"))
    task_batch_size: int = Field(8, ge=1, description="batch size of the task runs")
    dense: bool = Field(False, description=(
        "also score the uncompressed model on the same windows and tasks, before compressing"))

    @field_validator("datasets")
    @classmethod
    def _text_only(cls, v: list[str]) -> list[str]:
        if any(is_random_source(d) for d in v):
            raise ValueError("eval datasets: 'random' is a calibration source (no text to "
                             "score); use builtin, wikitext2, c4 or a text file")
        return v


class Expectation(_Strict):
    value: float
    tol: float = Field(..., ge=0, description="absolute tolerance")


StageConfig = Annotated[Union[tuple(config_classes())], Field(discriminator="method")]
DTypeName = Literal["auto", "float32", "float16", "bfloat16"]


class Recipe(_Strict):
    version: StrictInt = RECIPE_VERSION
    model: str | None = None
    device: str = "auto"
    dtype: DTypeName = Field("auto", description=(
        "compute dtype of the model during calibration and evaluation (auto: the checkpoint's "
        "own on CUDA, float32 on CPU)"))
    storage_dtype: DTypeName = Field("auto", description=(
        "dtype written for factors, dictionaries and uncompressed tensors (auto: the "
        "checkpoint's own, so a bfloat16 model stays bfloat16 even when computed in float32)"))
    calibration: Calibration = Field(default_factory=Calibration)
    gradients: Gradients = Field(default_factory=Gradients)
    targets: Targets = Field(default_factory=Targets)
    stages: list[StageConfig] = Field(..., min_length=1)
    output: str | None = None
    output_errors: bool | None = Field(None, description=(
        "measure each module's output error on calibration inputs for the report (default: "
        "whenever calibration runs anyway; a data-free run such as RTN or SVD then reads, "
        "compresses and writes without any forward pass)"))
    eval: Evaluation | None = None
    expect: dict[str, Expectation] = Field(default_factory=dict)

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != RECIPE_VERSION:
            raise ValueError(f"recipe version {v} is not supported (this svdc reads version "
                             f"{RECIPE_VERSION})")
        return v

    @model_validator(mode="before")
    @classmethod
    def _known_methods(cls, data: Any) -> Any:
        """Name the stage and the nearest method before the union reports a bare tag error."""
        stages = data.get("stages") if isinstance(data, dict) else None
        for i, stage in enumerate(stages if isinstance(stages, list) else []):
            if not isinstance(stage, dict) or "method" not in stage:
                raise ValueError(f"stage {i + 1} must be a mapping with a 'method' key, e.g. "
                                 f"{{method: gptq, bits: 4}}")
            stage_class(stage["method"])     # UserError with "did you mean"
        return data

    @model_validator(mode="after")
    def _stage_order(self) -> "Recipe":
        check_stage_order([s.method for s in self.stages],
                          is_random_source(self.calibration.dataset))
        return self
