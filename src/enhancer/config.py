"""Every runtime setting of the service in one place, read from `ENHANCER_*` environment variables.

Each field says what it trades off, so an operator can tune it without reading the code. Settings
are passed explicitly (`create_app(settings)`), never read from a module-level global, so tests and
embedders can build several differently configured apps in one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from enhancer.tiling import TILE_MULTIPLE

#: Where the model lives when nothing else is configured (relative to the repository root).
DEFAULT_MODEL_DIR = Path("weights") / "dejpeg"

#: The source checkout this module was loaded from (…/src/enhancer/config.py → the repo root).
_CHECKOUT_ROOT = Path(__file__).resolve().parents[2]


def resolve_model_dir(path: Path) -> Path:
    """Find a relative model directory: first under the working directory, then in the checkout.

    `enhancer serve` is usually started from the repository root, but an editable install run from
    elsewhere should still find the committed weights next to the source. If neither exists the
    working-directory path is returned so the load error names the place the user expects.
    """
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    candidates = [Path.cwd() / path, _CHECKOUT_ROOT / path]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return candidates[0]


class Settings(BaseSettings):
    """Service configuration; every field maps to `ENHANCER_<FIELD NAME>` (see `.env.example`)."""

    model_config = SettingsConfigDict(
        env_prefix="ENHANCER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        protected_namespaces=(),
    )

    # --- model -----------------------------------------------------------------------------
    model_dir: Path = Field(
        default=DEFAULT_MODEL_DIR,
        description="TensorFlow SavedModel directory (signature `serving_default`: `images` -> "
        "`enhanced`). Relative paths are looked up in the working directory, then in the source "
        "checkout.",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="Threads TensorFlow uses inside one op (0 = one per core). Lower it when other "
        "processes share the CPU; more threads speed a batch up but contend with decode/encode.",
    )
    inter_op_threads: int = Field(
        default=0,
        ge=0,
        description="Ops TensorFlow may run in parallel (0 = automatic). The net is a chain of "
        "convolutions, so 1-2 is enough; more only adds scheduling overhead.",
    )

    # --- tiling ----------------------------------------------------------------------------
    tile_size: int = Field(
        default=512,
        ge=16,
        le=4096,
        description="Largest tile edge fed to the model (a multiple of 4). Bigger tiles waste less compute on "
        "overlap but need more memory per batch and make small images wait for big batches.",
    )
    tile_overlap: int = Field(
        default=32,
        ge=0,
        description="Pixels neighbouring tiles share. Must be at least the net's reach (29 px) or "
        "seams appear; every extra pixel is recomputed work.",
    )

    # --- batching --------------------------------------------------------------------------
    max_batch_size: int = Field(
        default=4,
        ge=1,
        description="Most tiles run in one forward pass. Larger batches raise GPU throughput but "
        "add latency and memory; on CPU throughput barely changes past 2-4.",
    )
    max_batch_delay_ms: float = Field(
        default=5.0,
        ge=0,
        description="How long a batch waits for more tiles after its first one. Longer fills "
        "batches better under light load at the cost of that much added latency.",
    )
    max_queue_tiles: int = Field(
        default=1024,
        ge=1,
        description="Tiles allowed to wait for the model before requests are refused with 503. "
        "Higher absorbs bursts but lets latency grow; it must hold at least one large image.",
    )

    # --- request limits --------------------------------------------------------------------
    max_upload_bytes: int = Field(
        default=50 * 1024 * 1024,
        ge=1,
        description="Largest accepted upload in bytes (413 above it). Bounds memory and disk "
        "spent on a single request.",
    )
    max_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Largest accepted image in pixels (413 above it), checked from the header "
        "before decoding. A 50 MP image needs about 1.5 GB of float32 working memory.",
    )
    request_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Longest a request may wait for its tiles to be enhanced before a 504. "
        "Short values shed load sooner; too short fails large images on a busy CPU.",
    )

    # --- server ----------------------------------------------------------------------------
    host: str = Field(
        default="127.0.0.1",
        description="Interface `enhancer serve` binds; use 0.0.0.0 in a container or to serve "
        "other machines.",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port `enhancer serve` binds.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Log verbosity for the service and uvicorn."
    )
    shutdown_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="On shutdown, how long queued work may finish before it is dropped. Longer "
        "loses fewer requests on deploys but delays the restart.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("model_dir", mode="after")
    @classmethod
    def _resolve_model_dir(cls, value: Path) -> Path:
        return resolve_model_dir(value)

    @model_validator(mode="after")
    def _check_tiling(self) -> Settings:
        if self.tile_size % TILE_MULTIPLE:
            raise ValueError(
                f"tile_size ({self.tile_size}) must be a multiple of {TILE_MULTIPLE}: the net "
                "works at 1/4 resolution"
            )
        if 2 * self.tile_overlap > self.tile_size:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be at most half of tile_size "
                f"({self.tile_size}), or tiles would be mostly overlap"
            )
        return self

    @property
    def max_batch_delay_s(self) -> float:
        """The batch delay in seconds, as the batcher expects it."""
        return self.max_batch_delay_ms / 1000.0
