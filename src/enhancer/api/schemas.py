"""Response bodies the API documents in OpenAPI (the images themselves are raw bytes)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from enhancer.imaging import SUPPORTED_NAMES


class ErrorBody(BaseModel):
    """Every error answer: one sentence saying what is wrong and what to do about it."""

    detail: str = Field(examples=[f"the upload is not a supported image; send {SUPPORTED_NAMES}"])


class HealthBody(BaseModel):
    """Liveness: the process is up; `degraded` when the most recent model batch failed."""

    status: str = Field(examples=["ok", "degraded"])


class ServedModel(BaseModel):
    """One model this server serves."""

    name: str = Field(examples=["dejpeg"], description="What `?model=` takes (the model folder's name).")
    scale: int = Field(examples=[1], description="Output pixels per input pixel along each side.")
    default: bool = Field(description="Whether a request that names no model gets this one.")
    tile_size: int = Field(examples=[576], description="Largest tile edge this model runs on, in input pixels.")
    tile_overlap: int = Field(
        examples=[48], description="Input pixels its neighbouring tiles share (at least the model's receptive-field reach)."
    )
    solo_tile_size: int | None = Field(
        default=None,
        examples=[1536],
        description="Largest tile edge for an image the server has to itself (ENHANCER_SOLO_TILE_SIZE); "
        "null where this model gets no solo tiles (an enlarging model, batches, bucketed shapes, a GPU).",
    )
    precision: str = Field(
        examples=["float32 (set)"],
        description="This model's arithmetic and why: the server's, except where bfloat16 comes by graph "
        "rewrite and this model is kept in float32 (ENHANCER_PRECISION).",
    )


class ServingSettings(BaseModel):
    """The tiling and batching settings the server runs with: the ENHANCER_* values after the
    device's defaults were applied to those not set (so a client, a benchmark for one, can record
    what it measured instead of what it meant to set)."""

    tile_size: int = Field(examples=[576])
    tile_overlap: int = Field(examples=[32], description="The setting; unset, each model raises it to its own reach (models[].tile_overlap).")
    solo_tile_size: int = Field(
        examples=[1536], description="The solo tile edge in use, 0 = off (models[].solo_tile_size says for which models)."
    )
    max_batch_size: int = Field(examples=[1])
    max_batch_delay_ms: float = Field(examples=[5.0])
    batches_in_flight: int = Field(examples=[1])
    max_queue_tiles: int = Field(examples=[512])
    request_timeout_s: float = Field(examples=[120.0])
    xla: bool = Field(examples=[False])


class ReadyBody(BaseModel):
    """Readiness: every model is loaded and has run its warm-up tile shapes once."""

    status: str = Field(examples=["ready"])
    device: str = Field(examples=["CPU (intra-op threads auto, inter-op threads auto)"])
    precision: str = Field(
        description="The models' arithmetic on this device and why (ENHANCER_PRECISION); per model in `models`.",
        examples=["bfloat16 (auto: CPU has avx512_bf16, amx_bf16; oneDNN BF16 math, float32 in and out)"],
    )
    models: list[ServedModel]
    settings: ServingSettings


class AccessBody(BaseModel):
    """What a client needs to know before uploading: whether a key is needed, and if the one it
    sent (`Authorization: Bearer <key>`) is accepted."""

    api_key_required: bool = Field(examples=[True])
    key_accepted: bool = Field(examples=[False])
