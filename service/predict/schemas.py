"""API schemas of predict, streaming predict, TE similarity and task samples."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Returnable = Literal["probabilities", "firing_rates", "spikes"]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # Checked (shape, finiteness, count) by the service against the job's task, so the 422 can
    # name the expected shape; parsing nested lists here would only say "not a list".
    inputs: Any = Field(..., description="[N, T, F] numbers, or [N, T] when F = 1")
    checkpoint: str = Field("best", description='"best", "latest" or a checkpoint id')
    return_: list[Returnable] = Field(
        default_factory=lambda: ["probabilities", "firing_rates"],
        alias="return",
        description="extras to include; 'spikes' adds the raster of layer `spikes_layer`",
    )
    spikes_layer: int = Field(0, ge=0, description="hidden layer whose spikes are returned")


class StreamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    checkpoint: str = Field("best", description='"best", "latest" or a checkpoint id')
    return_: list[Literal["probabilities"]] = Field(
        default_factory=lambda: ["probabilities"], alias="return"
    )


class StreamChunk(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: Any = Field(..., description="[N, t, F] (or [N, t] when F = 1): the next t steps")


class CheckpointRef(BaseModel):
    id: str
    step: int
    sha256: str


class StreamOut(BaseModel):
    stream_id: str
    job_id: str
    checkpoint: CheckpointRef
    expected_shape: str
    max_steps: int | None
    ttl_s: float


class PredictResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    job_id: str
    checkpoint: CheckpointRef
    kind: str
    predictions: list[dict[str, Any]]
    firing_rates: list[float] | None = None
    spikes: dict[str, Any] | None = None
    cached: bool
    elapsed_ms: float


class ChunkResponse(BaseModel):
    stream_id: str
    kind: str
    steps: int
    complete: bool
    predictions: list[dict[str, Any]]


class TeSimilarity(BaseModel):
    job_id: str
    checkpoint: CheckpointRef
    parameter: str
    layer: int
    steps: int
    neurons: int
    stride: int = Field(..., description="timesteps averaged per matrix row/column")
    matrix: list[list[float]]


class Samples(BaseModel):
    task: str
    split: str
    kind: str
    inputs: list[Any]
    targets: list[Any]
    shape: list[int]
