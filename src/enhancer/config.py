"""Every runtime setting of the service in one place, read from `ENHANCER_*` environment variables.

Each field says what it trades off, so an operator can tune it without reading the code. Settings
are passed explicitly (`create_app(settings)`), never read from a module-level global, so tests and
embedders can build several differently configured apps in one process.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, NamedTuple

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from enhancer.limits import DEFAULT_MAX_IMAGE_SIDE, DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from enhancer.models.contract import ModelSpec

#: Where the model lives when nothing else is configured (relative to the repository root).
DEFAULT_MODEL_DIR = Path("weights") / "dejpeg-q"
#: The upscaling models served beside it when nothing else is configured, each once its folder
#: holds a model (until their weights are trained and committed, the server starts without them).
#: The previous restorer, weights/dejpeg, is not among the defaults: it is kept for comparisons.
DEFAULT_UPSCALE_MODEL_DIRS = (Path("weights") / "upscale-x2", Path("weights") / "upscale-x4")
#: Default of max_output_pixels: the largest answer an upload may ask for (scale² x its pixels).
#: Measured (benchmarks/drivers/upscale.py, README "Upscaling memory and speed"): a server with the
#: three default models answering one 64 MP 4x request peaked at 2.03 GiB RSS (13.8 MB per answer
#: megapixel at 4x, 12.3 at 2x), under the issue's 3 GB with room for other requests in flight.
DEFAULT_MAX_OUTPUT_PIXELS = 64_000_000

#: The source checkout this module was loaded from (…/src/enhancer/config.py → the repo root).
_CHECKOUT_ROOT = Path(__file__).resolve().parents[2]

#: Tile and batch size on a GPU when ENHANCER_TILE_SIZE / ENHANCER_MAX_BATCH_SIZE are not set (on a
#: CPU the field defaults apply). Reasoned, not measured (no GPU in CI): a bigger tile recomputes a
#: smaller share of its pixels as overlap, and a batch of 8 such tiles is enough work per pass to
#: keep a GPU busy (the arithmetic is in docs/DEPLOYMENT.md); warm-up runs the full batch, so a GPU
#: too small for it fails at start-up, not on a request.
#: Two batches in flight let the model thread start the next batch the moment one returns; on a CPU
#: they move model time from small requests to big images, so there it stays 1 (both measured:
#: benchmarks/RESULTS.md, "Two batches in flight").
#: Solo tiles (solo_tile_size) are off on a GPU: there tiles of one shape share batches.
GPU_DEFAULTS: dict[str, int] = {"tile_size": 1024, "max_batch_size": 8, "batches_in_flight": 2, "solo_tile_size": 0}


class Tiling(NamedTuple):
    """How one model's images are cut, in input pixels (Settings.tiling_for)."""

    tile_size: int  #: largest tile edge
    tile_overlap: int  #: pixels neighbouring tiles share


def device_defaults(device_kind: str, explicit: Iterable[str] = ()) -> dict[str, int]:
    """Tile/batch settings for the device the model runs on ("cpu" or "gpu"), minus explicit fields.

    Pure: `Settings.for_device` applies the result at start-up, once the device is resolved; a
    field named in `explicit` (set by environment, .env or argument) is left out.
    """
    if device_kind == "gpu":
        chosen = GPU_DEFAULTS
    elif device_kind == "cpu":
        chosen = {name: Settings.model_fields[name].default for name in GPU_DEFAULTS}
    else:
        raise ValueError(f"device_kind must be 'cpu' or 'gpu', got {device_kind!r}")
    explicit = set(explicit)
    return {name: value for name, value in chosen.items() if name not in explicit}


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
        env_ignore_empty=True,  # `ENHANCER_MODELS_DIR=` (as in .env.example) means unset
    )

    # --- model -----------------------------------------------------------------------------
    model_dir: Path = Field(
        default=DEFAULT_MODEL_DIR,
        description="The model folder to serve: a TensorFlow SavedModel (signature `serving_default`: "
        "`images` -> `enhanced`) with its metadata.json. Relative paths are looked up in the working "
        "directory, then in the source checkout. Ignored when models_dir is set.",
    )
    models_dir: Path | None = Field(
        default=None,
        description="Serve every model folder under this directory instead of model_dir, each named by "
        "its folder (requests choose one with `?model=`). Adding a model is adding a folder; every "
        "model costs its memory and warm-up time. Unset: serve model_dir alone.",
    )
    upscale_model_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_UPSCALE_MODEL_DIRS),
        validate_default=True,  # the default's relative paths are resolved like a set value's
        description="Upscaling model folders served beside model_dir (comma-separated), for requests "
        "with `?scale=2` or `4`. Default: weights/upscale-x2 and weights/upscale-x4, each served once "
        "its folder holds a model (a default folder without one is skipped, with a log line); a folder "
        "named here explicitly must hold one. `none`: serve model_dir alone. Ignored when models_dir "
        "is set. Every model costs its memory and warm-up time.",
    )
    default_model: str | None = Field(
        default=None,
        description="Name of the model a request that names none gets. Unset: the only model served, "
        "or the only one with scale 1; with several candidates start-up stops and asks for it.",
    )
    pass_through_jpeg_quality: int = Field(
        default=96,
        ge=1,
        le=101,
        description="JPEG uploads whose quality (estimated from their quantisation table) is at "
        "least this are answered with their own pixels, without running the model. 96: on the "
        "validation set the served model's worst image stays above -0.1 dB up to q95 and falls below "
        "it at q98 (`enhancer validate-high-quality`, weights/dejpeg-q/MODEL_CARD.md); "
        "skipping such files also saves the compute. 101 = always run the model.",
    )
    pass_through_resaved_jpeg: bool = Field(
        default=True,
        description="Under strength auto, answer a JPEG that was a coarser JPEG before, saved again "
        "at the same 8x8 block grid (its DCT coefficients sit on a coarser step than its own "
        "table's), with its own pixels: its blocks were in the picture it was saved from, and "
        "removing them moves the answer away from that picture (training-runs/probes-resave). "
        "Strength light and strong still restore such files. false = restore them under auto too.",
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
        default=576,
        ge=16,
        le=4096,
        description="Largest tile edge fed to the model (a multiple of every served model's size multiple, "
        "4 for dejpeg; checked at start-up). Bigger tiles waste less compute on overlap but need more "
        "memory per batch and make small images wait for big batches.",
    )
    solo_tile_size: int = Field(
        default=1536,
        ge=0,
        le=4096,
        description="Largest tile edge for an image the server has to itself (no other request in "
        "flight when it is cut), at scale 1, batch 1 and exact tile shapes (the CPU defaults); 0, or "
        "no more than tile_size, turns it off (the GPU default; unset, it is also off when tile_size "
        "is set). A big tile recomputes less overlap and keeps more cores busy, so a large photo "
        "alone comes back sooner; a request that arrives meanwhile waits for the big tile in "
        "progress, and the tile's activations are held once (both measured: benchmarks/RESULTS.md, "
        "\"Solo tiles and the threaded PNG writer\").",
    )
    upscale_tile_size: int | None = Field(
        default=None,
        ge=16,
        le=4096,
        description="Largest tile edge, in input pixels, for models that enlarge (scale 2 and 4). Per "
        "input pixel a 4x tile costs 3-5x a restoring one (measured), and a tile runs to its end once "
        "started, so a 1x request that arrives waits behind a whole 4x tile: with 576 px 4x tiles small "
        "requests' p99 rose 7.9x beside a 4x job, with 288 px 2.1x (benchmarks/results/fairness_x4.json). "
        "Unset: half of tile_size (288 on a CPU, 512 on a GPU), rounded down to the model's size "
        "multiple and at least twice the overlap.",
    )
    tile_overlap: int = Field(
        default=32,
        ge=0,
        description="Pixels neighbouring tiles share. Must be at least every served model's "
        "receptive-field reach (checked at start-up) or seams appear; every extra pixel is recomputed "
        "work. When not set, each model gets its own: 32, or its reach rounded up to its size multiple "
        "(/readyz lists each model's).",
    )

    border_context: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Mirrored pixels given to the model beyond every image border (rounded up to the "
        "model's size multiple, at most 1/8 of the side); 0 = none, the model's own zero padding. "
        "Context makes every image run as more pixels than it has (a 512x512 image as 544x544 with "
        "16 px); what it buys at the border was measured too small to see (benchmarks/RESULTS.md, "
        "\"Border context\").",
    )
    tile_buckets: bool | None = Field(
        default=None,
        description="Round tile sides up to a short ladder of sizes (buckets) so tiles of different "
        "images share a shape, hence a batch, and warm-up covers every shape; off, a tile side is any "
        "multiple of the model's size multiple, as small as the image allows (a 512x512 image runs "
        "as 512x512, not 576x576). Unset: on when max_batch_size > 1 (the GPU default) and off at "
        "batch 1 (the CPU default), where no tiles share a batch and TensorFlow needs no warm-up per "
        "shape. Always on with XLA, which compiles per shape.",
    )

    # --- batching --------------------------------------------------------------------------
    max_batch_size: int = Field(
        default=1,
        ge=1,
        description="Most tiles run in one forward pass. Larger batches raise GPU throughput but "
        "add latency and memory. On a CPU a batch is no faster per tile (measured: batch 1, 2 and 4 "
        "within noise) and a batch of big tiles makes small requests wait behind it, so unset it is "
        "1 on a CPU and 8 on a GPU (tile_size likewise: 576 / 1024), chosen when the model loads "
        "(benchmarks/RESULTS.md).",
    )
    batches_in_flight: int = Field(
        default=1,
        ge=1,
        le=8,
        description="Batches formed and not yet finished. With 2 the next batch is picked and stacked "
        "while the model runs the current one, so the model need not wait for the event loop; a request "
        "arriving meanwhile then waits one batch longer. Unset it is 1 on a CPU and 2 on a GPU.",
    )
    max_batch_delay_ms: float = Field(
        default=5.0,
        ge=0,
        description="How long a batch waits for more tiles after its first one. Longer fills "
        "batches better under light load at the cost of that much added latency.",
    )
    max_queue_tiles: int = Field(
        default=512,
        ge=1,
        description="Tiles allowed to wait for the model before requests are refused with 503. "
        "Higher absorbs bursts but lets latency grow: 512 tiles of 576 px take ~1.5 minutes on an "
        "idle 2-core CPU, inside the request timeout, and hold two 50 MP images.",
    )

    # --- request limits --------------------------------------------------------------------
    max_upload_bytes: int = Field(
        default=50 * 1024 * 1024,
        ge=1,
        description="Largest accepted upload in bytes (413 above it). Bounds memory and disk "
        "spent on a single request.",
    )
    max_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS,
        ge=1,
        description="Largest accepted image in pixels (413 above it), checked from the header "
        "before decoding. What an image costs in memory while it is served is measured per pixel "
        "(benchmarks/RESULTS.md) and bounded by max_pixels_in_flight. Also OpenCV's decode limit "
        "when set in the environment (read at import).",
    )
    max_pixels_in_flight: int | None = Field(
        default=None,
        ge=1,
        description="Image pixels being decoded, split, queued as tiles, stitched and encoded at "
        "once, charged from each upload's header before decoding and released when its answer has "
        "been sent; an upload that does not fit gets 503 with Retry-After. It bounds the memory "
        "images take. An image larger than the whole budget (within max_pixels) is served when "
        "nothing else is in flight. Unset: half the memory the process may use (its cgroup limit, "
        "else the machine's RAM) divided by the measured peak bytes per pixel in flight "
        "(enhancer.pixel_budget); set it when other work shares the machine.",
    )
    max_output_pixels: int = Field(
        default=DEFAULT_MAX_OUTPUT_PIXELS,
        ge=1,
        description="Largest answer in pixels: an upload asking for `scale` is refused (413) when "
        "scale² x its pixels is more, checked from the header before decoding. Upscaling memory "
        "grows with the answer, not the upload; the default keeps a 2x or 4x answer at the limit "
        "under 3 GB peak resident memory for the whole server (measured, benchmarks/RESULTS.md). "
        "Answers at scale 1 are bounded by max_pixels instead.",
    )
    max_image_side: int = Field(
        default=DEFAULT_MAX_IMAGE_SIDE,
        ge=1,
        description="Longest accepted image side in pixels (413 above it), checked from the "
        "header; stops 1 x 50,000,000 strips that pass the pixel limit. Also OpenCV's limit.",
    )
    request_read_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="Longest a client may take to send its whole request body (408 after). "
        "Stops slow-trickle uploads from holding a connection and memory forever; too short "
        "fails large uploads on slow links (50 MB at 5 Mbit/s takes 80 s).",
    )
    request_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Longest a request may wait for its tiles to be enhanced before a 504. "
        "Short values shed load sooner; too short fails large images on a busy CPU.",
    )

    # --- answers ---------------------------------------------------------------------------
    png_compression: int | None = Field(
        default=None,
        ge=0,
        le=9,
        description="zlib level of PNG answers, 0-9: higher makes smaller files (same pixels) for "
        "more CPU, which on a CPU server is taken from the model. Unset: OpenCV's preset for speed "
        "(level 1, the 'sub' filter, run-length strategy), faster than levels 1-3 and no larger "
        "(benchmarks/RESULTS.md, \"PNG compression level\").",
    )

    # --- accelerator -----------------------------------------------------------------------
    gpu_memory_growth: bool = Field(
        default=True,
        description="Take GPU memory as it is needed instead of nearly all of it at start-up, so "
        "replicas or other processes can share the GPU. Turn off only when this server owns the "
        "GPU and you prefer one up-front reservation.",
    )
    precision: Literal["auto", "float32", "bfloat16", "mixed_float16"] = Field(
        default="auto",
        description="auto: on CPUs with avx512_bf16 or AMX (amx_bf16), TensorFlow's bfloat16 graph "
        "rewrite for each model whose metadata.json records a rewrite change within 0.05 dB, float32 "
        "for the others; where no served model may take it, with AMX oneDNN's BF16 math mode unless "
        "a served model's metadata.json records a math-mode PSNR change over 0.05 dB, without AMX "
        "float32 (oneDNN runs float32 kernels in that mode there); float32 on other CPUs; "
        "mixed_float16 on GPUs. bfloat16: "
        "with AMX oneDNN's BF16 math mode (ONEDNN_DEFAULT_FPMATH_MODE=BF16, set before TensorFlow "
        "loads): convolution inputs rounded to bfloat16, float32 accumulation, float32 in and out; "
        "with avx512_bf16 alone TensorFlow's bfloat16 graph rewrite of the convolutions (it moves "
        "answers more: benchmarks/RESULTS.md); a start-up error on a CPU with neither. mixed_float16: TensorFlow's automatic mixed precision rewrite, float16 convolutions on "
        "GPUs with compute capability 7.0+ (Tensor Cores), no effect elsewhere. The SavedModel, its "
        "inputs and outputs stay float32 in every case (enhancer.precision).",
    )
    xla: bool = Field(
        default=False,
        description="Compile the model with XLA. Warm-up compiles every tile shape at batch 1 and "
        "max_batch_size (start-up takes longer) and batches are padded to one of those two, so "
        "no request waits for a compile. May speed up a GPU; measure before turning it on.",
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
        description="On SIGTERM, the one bound on shutdown: in-flight requests may finish and "
        "queued work drain within it, then the rest is dropped and the process exits. Longer "
        "loses fewer requests on deploys but delays the restart.",
    )

    # --- access ----------------------------------------------------------------------------
    api_keys: SecretStr = Field(
        default=SecretStr(""),
        description="Comma-separated API keys. When any key is configured (here or in "
        "api_keys_file), POST /upscale needs `Authorization: Bearer <key>` (401 without); only "
        "their SHA-256 digests are kept. Empty = no keys: anyone who reaches the port may upload.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="File with one API key per line (blank lines and # comments ignored), e.g. a "
        "compose secret or Kubernetes Secret mounted as a file; used together with api_keys. Read "
        "at start-up: a file that cannot be read, or holds no key, stops the server.",
    )
    metrics_require_key: bool = Field(
        default=False,
        description="Also require an API key for GET /metrics. Off by default so a Prometheus "
        "scraper inside the cluster needs no key; the metrics carry no keys or client addresses.",
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Comma-separated proxy addresses or networks (CIDR), or *, whose "
        "X-Forwarded-For header names the real client for the per-client limits; from any other "
        "peer the header is ignored, so clients cannot pose as someone else. Same meaning and "
        "default as uvicorn's --forwarded-allow-ips, which `enhancer serve` sets from it.",
    )
    max_concurrent_per_client: int = Field(
        default=0,
        ge=0,
        description="Uploads one client may have in flight (429 with Retry-After above it); a "
        "client is its API key when keys are on, else its address. Stops one client from taking "
        "every slot of the queue. 0 = no limit.",
    )
    rate_limit_mpx_per_minute: float = Field(
        default=0.0,
        ge=0,
        description="Megapixels one client may send per minute, charged from the image header "
        "before decoding (token bucket holding one minute's worth, so short bursts pass); over it "
        "429 with Retry-After from the bucket. An image larger than a minute's worth is taken "
        "when the bucket is full and then repaid. 0 = no limit.",
    )

    @field_validator("api_keys_file", mode="before")
    @classmethod
    def _empty_keys_file_is_none(cls, value: object) -> object:
        # `ENHANCER_API_KEYS_FILE=` (as in .env.example) means no file, not the directory "."
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("forwarded_allow_ips", mode="after")
    @classmethod
    def _check_forwarded_allow_ips(cls, value: str) -> str:
        for entry in (e.strip() for e in value.split(",")):
            if entry in ("", "*"):
                continue
            try:  # strict, as uvicorn parses it: 10.0.0.5/8 is refused, not silently widened
                ipaddress.ip_network(entry) if "/" in entry else ipaddress.ip_address(entry)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network; list proxy addresses such as "
                    "10.0.0.5 or 10.0.0.0/8, or * to trust every peer"
                ) from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("model_dir", "models_dir", mode="after")
    @classmethod
    def _resolve_model_dir(cls, value: Path | None) -> Path | None:
        return None if value is None else resolve_model_dir(value)

    @field_validator("upscale_model_dirs", mode="before")
    @classmethod
    def _split_upscale_model_dirs(cls, value: object) -> object:
        # `a,b` from the environment; `none` (any case) for no upscaling model
        if isinstance(value, str):
            if value.strip().lower() == "none":
                return []
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("upscale_model_dirs", mode="after")
    @classmethod
    def _resolve_upscale_model_dirs(cls, value: list[Path]) -> list[Path]:
        return [resolve_model_dir(path) for path in value]

    @model_validator(mode="after")
    def _check_tiling(self) -> Settings:
        # The tile size's multiple and the overlap's minimum come from the served models' specs and
        # are checked against them at start-up (enhancer.models.contract.ModelSpec.check_tiling).
        for name in ("tile_size", "upscale_tile_size"):  # a solo tile is off unless larger than tile_size
            size = getattr(self, name)
            if size is not None and 2 * self.tile_overlap > size:
                raise ValueError(
                    f"tile_overlap ({self.tile_overlap}) must be at most half of {name} "
                    f"({size}), or tiles would be mostly overlap"
                )
        return self

    def for_device(self, device_kind: str) -> Settings:
        """These settings with tile/batch sizes for `device_kind` where none was set explicitly.

        The filled-in fields stay defaults (not in `model_fields_set`): the device chose them.
        """
        update = device_defaults(device_kind, self.model_fields_set)
        if not update:
            return self
        values = {**self.model_dump(), **update}
        return type(self).model_construct(_fields_set=set(self.model_fields_set), **values)._check_tiling()

    def describe_inference(self, device_kind: str, device: str, precision: str | None = None) -> str:
        """One log line: where and how the models run, and the batch and tile settings in use.

        `precision` is what the runner reports it actually does (default: the setting).
        """

        def origin(name: str) -> str:
            if name in self.model_fields_set:
                return "set"
            return f"{device_kind.upper()} default" if name in GPU_DEFAULTS else "default"

        return (
            f"inference on {device}; precision {precision or self.precision}; XLA {'on' if self.xla else 'off'}; "
            f"GPU memory growth {'on' if self.gpu_memory_growth else 'off'}; "
            f"max_batch_size {self.max_batch_size} ({origin('max_batch_size')}), "
            f"batches_in_flight {self.batches_in_flight} ({origin('batches_in_flight')}); "
            f"tile_size {self.tile_size} ({origin('tile_size')}), "
            f"overlap {self.tile_overlap if 'tile_overlap' in self.model_fields_set else 'per model (its reach)'}, "
            f"upscale_tile_size {self.upscale_tile_size if self.upscale_tile_size is not None else 'half'}, "
            f"solo_tile_size {self.solo_tile_size if self.uses_solo_tiles else 'off'}, "
            f"border context {self.border_context}, {'bucketed' if self.uses_tile_buckets else 'exact'} tile shapes; "
            f"max_batch_delay_ms {self.max_batch_delay_ms:g}"
        )

    def tiling_for(self, spec: ModelSpec, *, alone: bool = False) -> Tiling:
        """How one served model's images are cut (input pixels); `alone`: for an image the server
        has to itself (solo_tile_size).

        Overlap: tile_overlap where it was set (start-up refuses it below any served model's
        reach); otherwise the default raised to this model's own reach, rounded up to its size
        multiple, so each model recomputes only the border its own receptive field needs and a
        far-seeing upscaler does not make every restoring tile pay for its reach.
        Tile edge: tile_size at scale 1 (solo_tile_size for an image alone, where solo tiles are
        on); for an enlarging model upscale_tile_size, or half of tile_size (a multiple of the size
        multiple, at least twice the overlap, at most tile_size).
        """
        multiple = spec.size_multiple
        overlap = self.tile_overlap
        if "tile_overlap" not in self.model_fields_set:
            overlap = max(overlap, -(-spec.reach // multiple) * multiple)
        if spec.scale == 1:
            size = self.solo_tile_size if alone and self.uses_solo_tiles else self.tile_size
        elif self.upscale_tile_size is not None:
            size = self.upscale_tile_size
        else:
            half = self.tile_size // 2 // multiple * multiple
            floor = -(-2 * overlap // multiple) * multiple
            size = min(self.tile_size, max(half, floor, multiple))
        return Tiling(tile_size=size, tile_overlap=overlap)

    def solo_tile_for(self, spec: ModelSpec) -> int | None:
        """The tile edge `spec`'s model gets for an image alone, or None where it gets no solo tiles."""
        return self.tiling_for(spec, alone=True).tile_size if spec.scale == 1 and self.uses_solo_tiles else None

    @property
    def uses_solo_tiles(self) -> bool:
        """Whether an image alone gets solo_tile_size tiles: larger than tile_size, one tile per
        batch, exact shapes (a bucketed or batched big tile would be a shape of its own to warm, or
        several big tiles' activations at once)."""
        if "tile_size" in self.model_fields_set and "solo_tile_size" not in self.model_fields_set:
            return False  # a tile size chosen (for memory, say) holds for every image unless solo is set too
        return self.solo_tile_size > self.tile_size and self.max_batch_size == 1 and not self.uses_tile_buckets

    @property
    def uses_tile_buckets(self) -> bool:
        """Whether tile sides are rounded up to bucket sizes (tile_buckets, resolved: see its description)."""
        if self.xla:
            return True
        return self.max_batch_size > 1 if self.tile_buckets is None else self.tile_buckets

    @property
    def max_batch_delay_s(self) -> float:
        """The batch delay in seconds, as the batcher expects it."""
        return self.max_batch_delay_ms / 1000.0
