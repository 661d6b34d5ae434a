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


class ReadyBody(BaseModel):
    """Readiness: the model is loaded and every tile shape has been run once."""

    status: str = Field(examples=["ready"])
    device: str = Field(examples=["CPU (intra-op threads auto, inter-op threads auto)"])
