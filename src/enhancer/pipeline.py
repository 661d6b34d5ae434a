"""The enhancement pipeline, written once: decode -> pass-through decision -> split -> run the
tiles -> stitch -> clip -> encode.

Synchronous, and free of HTTP and of any model framework. Only "run the tiles" differs between
its users: the server hands the tiles to the micro-batcher (enhancer.service), while
`enhancer enhance` and the benchmarks' prototype server run them in-process (`DirectTiles`). The
server calls `prepare` and `finish` in worker threads and awaits the batcher between them; `run`
is the same three steps for a caller that runs the tiles itself.

Memory: pixels stay in compact sample types (enhancer.samples) from decoding to encoding: the
decoded image and its tiles in the decoder's (a byte per sample for 8-bit images), the model's
outputs as 16-bit samples, the stitched image at the answer's depth; float32 exists one batch or
one band of rows at a time. Every full-size array is dropped as soon as the next step has its own. What that costs per
pixel is measured in benchmarks/RESULTS.md and sets the default pixel budget (enhancer.pixel_budget).

Upscaling (a model whose spec has `scale` > 1): the answer is `scale` times the input's width and
height, so its size is checked against the output limit from the header, before decoding; the
model always runs (a small image must be enlarged, whatever the strength or the JPEG's quality);
an alpha channel is enlarged beside it (`imaging.enlarge_alpha`). The enlarged image never exists
as float32 as a whole: its tiles are 16-bit samples and it is stitched band by band.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np

from enhancer import imaging, tiling
from enhancer.conditioning import Strength, model_inputs, upright_luma_table
from enhancer.imaging import ImageInfo, OutputFormat, earlier_jpeg
from enhancer.models.contract import Model, ModelSpec
from enhancer.samples import OUTPUT_DTYPE, dtype_for_depth

if TYPE_CHECKING:
    from enhancer.config import Settings

#: Stage names of the timings (Server-Timing, metrics), in pipeline order.
STAGES = ("decode", "tile", "queue", "infer", "encode")


class Scale(IntEnum):
    """The output scales offered (the `scale` query parameter, `enhancer enhance --scale`): the
    answer is this many times the input's width and height."""

    x1 = 1
    x2 = 2
    x4 = 4


def pass_through_reason(info: ImageInfo, min_jpeg_quality: int) -> str | None:
    """Why the image `info` describes should skip the model (e.g. "jpeg-quality=95"), or None.

    A JPEG saved at a high quality has little damage to remove, and there the blind model's
    measured gain is negative: such an image is better answered with its own pixels.
    """
    quality = info.jpeg.quality if info.jpeg is not None else None
    if quality is not None and quality >= min_jpeg_quality:
        return f"jpeg-quality={quality}"
    return None


def resaved_jpeg_reason(image: imaging.DecodedImage) -> str | None:
    """"resaved-jpeg" for a JPEG that was a coarser JPEG before, saved again at the same block grid
    (imaging.earlier_jpeg), or None.

    Its blocks were in the picture the file was made from, and the restorer removes them: measured
    against that picture, harm (training-runs/probes-resave). Under strength auto such a file is
    answered with its own pixels; light and strong still restore it.
    """
    table = upright_luma_table(image.info)
    pixels = image.pixels
    if table is None or pixels.dtype != np.uint8 or pixels.shape[2:] != (3,):  # judged on 8-bit RGB only
        return None
    return "resaved-jpeg" if earlier_jpeg.is_resaved(pixels, table) else None


@dataclass(frozen=True, eq=False)
class TileJob:
    """One image's tiles for one model, plus the image's extra model inputs (one vector per name)."""

    model: str
    tiles: np.ndarray
    inputs: Mapping[str, np.ndarray]


#: "Run the tiles": [T, h, w, 3] in, [T, h * scale, w * scale, 3] out, in tile order (samples of
#: any type enhancer.samples knows; the model itself sees float32 batches).
TileRunner = Callable[[TileJob], np.ndarray]


@dataclass(frozen=True)
class EnhanceResult:
    """An encoded answer plus the seconds each stage took."""

    body: bytes
    format: OutputFormat
    width: int
    height: int
    model: str  #: the model the image was routed to
    timings: dict[str, float] = field(default_factory=dict)
    #: The answer's size over the input's, per side (the model's scale).
    scale: int = 1
    #: Why the model did not run (the image was passed through), or None when it did.
    passed_through: str | None = None


@dataclass(eq=False)
class Prepared:
    """An image between `prepare` and `finish`: its tiles leave as a TileJob and come back as outputs."""

    spec: ModelSpec
    info: ImageInfo  #: what the answer is encoded like
    timings: dict[str, float]
    pixels: np.ndarray | None = None  #: the decoded pixels, kept only when passed through
    plan: tiling.TilePlan | None = None
    job: TileJob | None = None
    outputs: np.ndarray | None = None  #: the model's tiles (float or integer samples), set by whoever ran the job
    passed_through: str | None = None

    def take_job(self) -> TileJob:
        """Hand the tiles over and forget them here, so they are freed once they have run."""
        job, self.job = self.job, None
        if job is None:
            raise ValueError("this image has no tiles to run (it was passed through, or they were taken)")
        return job


class Pipeline:
    """The synchronous steps every way of enhancing an image shares (see the module docstring)."""

    def __init__(
        self,
        *,
        tile_size: int,
        tile_overlap: int,
        max_pixels: int | None = None,
        max_side: int | None = None,
        pass_through_jpeg_quality: int = 101,
        pass_through_resaved_jpeg: bool = False,
        max_output_pixels: int | None = None,
        tiling_for: Callable[..., tuple[int, int]] | None = None,
        border_context: int | None = None,
        tile_buckets: bool = True,
        png_compression: int | None = None,
    ):
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.pass_through_jpeg_quality = pass_through_jpeg_quality
        self.pass_through_resaved_jpeg = pass_through_resaved_jpeg
        self.max_output_pixels = max_output_pixels
        #: (model spec, alone=) -> (tile edge, overlap) for that model (Settings.tiling_for); None: the same for all
        self.tiling_for = tiling_for or (lambda spec, alone=False: (tile_size, tile_overlap))
        self.border_context = border_context  #: None: the overlap (enhancer.tiling.plan_axis)
        self.tile_buckets = tile_buckets
        self.png_compression = png_compression

    @classmethod
    def from_settings(cls, settings: Settings) -> Pipeline:
        """The pipeline the settings describe (resolved for the device, see Settings.for_device)."""
        return cls(
            tile_size=settings.tile_size,
            tile_overlap=settings.tile_overlap,
            max_pixels=settings.max_pixels,
            max_side=settings.max_image_side,
            pass_through_jpeg_quality=settings.pass_through_jpeg_quality,
            pass_through_resaved_jpeg=settings.pass_through_resaved_jpeg,
            max_output_pixels=settings.max_output_pixels,
            tiling_for=settings.tiling_for,
            border_context=settings.border_context,
            tile_buckets=settings.uses_tile_buckets,
            png_compression=settings.png_compression,
        )

    def prepare(self, data: bytes, spec: ModelSpec, strength: Strength = Strength.auto, alone: bool = False) -> Prepared:
        """Decode, decide whether the model runs, and if it does cut the tiles for `spec`'s model
        (with the extra inputs the strength asked for; `off` answers with the input's pixels at
        scale 1). An enlarging model always runs, on images whose answer fits the output limit.
        `alone`: nothing else is being served, so the image may be cut in solo tiles
        (Settings.tiling_for)."""
        clock = time.perf_counter
        t = clock()
        scale = spec.scale
        if scale > 1 and self.max_output_pixels is not None:
            size = imaging.read_image_size(data)  # the header only: refused before anything is decoded
            if size is not None:
                imaging.check_output_size(*size, scale, self.max_output_pixels)
        image = imaging.decode(data, max_pixels=self.max_pixels, max_side=self.max_side)
        if scale > 1 and self.max_output_pixels is not None:  # a header only the decoder could read
            imaging.check_output_size(image.info.width, image.info.height, scale, self.max_output_pixels)
        if scale > 1:
            reason = None  # the small image must be enlarged: the model runs (told "no damage" at off)
        elif strength is Strength.off:
            reason = "strength=off"
        else:
            reason = pass_through_reason(image.info, self.pass_through_jpeg_quality)
            if reason is None and strength is Strength.auto and self.pass_through_resaved_jpeg:
                reason = resaved_jpeg_reason(image)
        timings = {"decode": clock() - t}  # reading the file, and what it says about its history
        if reason is not None:
            timings.update(tile=0.0, queue=0.0, infer=0.0)  # no tiles: nothing queued or run
            return Prepared(spec=spec, info=image.info, timings=timings, pixels=image.pixels, passed_through=reason)
        t = clock()
        tile_size, overlap = self.tiling_for(spec, alone=alone)
        plan = tiling.plan_tiles(
            image.info.height, image.info.width, tile_size, overlap,
            multiple=spec.size_multiple, context=self.border_context, buckets=self.tile_buckets,
        )  # fmt: skip
        job = TileJob(model=spec.name, tiles=tiling.split(image.pixels, plan), inputs=model_inputs(spec, image.info, strength))
        timings["tile"] = clock() - t
        return Prepared(spec=spec, info=image.info, timings=timings, plan=plan, job=job)

    def finish(self, prepared: Prepared, fmt: OutputFormat, quality: int = 95) -> EnhanceResult:
        """Stitch the model's tiles (or take the passed-through pixels), clip, and encode."""
        clock = time.perf_counter
        info, scale = prepared.info, prepared.spec.scale
        if prepared.passed_through is not None:
            rgb, prepared.pixels = prepared.pixels, None
        else:
            outputs, prepared.outputs = prepared.outputs, None
            if outputs is None:
                raise ValueError("finish() needs the model's tiles: run the job and set Prepared.outputs")
            t = clock()
            depth = imaging.answer_depth(fmt, prepared.info)  # rounded once, to what the answer keeps
            rgb = tiling.stitch(outputs, prepared.plan, scale=prepared.spec.scale, dtype=dtype_for_depth(depth))
            del outputs
            if scale > 1:  # the answer looks like the input at its new size
                info = dataclasses.replace(
                    info,
                    width=info.width * scale,
                    height=info.height * scale,
                    alpha=None if info.alpha is None else imaging.enlarge_alpha(info.alpha, scale),
                )
            prepared.timings["tile"] += clock() - t
        t = clock()
        body = imaging.encode(rgb, fmt, quality=quality, info=info, png_compression=self.png_compression)
        prepared.timings["encode"] = clock() - t
        return EnhanceResult(
            body=body,
            format=fmt,
            width=rgb.shape[1],
            height=rgb.shape[0],
            model=prepared.spec.name,
            timings=prepared.timings,
            passed_through=prepared.passed_through,
            scale=1 if prepared.passed_through is not None else scale,
        )

    def run(
        self, data: bytes, spec: ModelSpec, fmt: OutputFormat, quality: int, run_tiles: TileRunner,
        strength: Strength = Strength.auto, alone: bool = False,
    ) -> EnhanceResult:  # fmt: skip
        """The whole pipeline in this thread, with `run_tiles` running the tiles (e.g. DirectTiles);
        `alone` as in `prepare`."""
        prepared = self.prepare(data, spec, strength, alone)
        if prepared.job is not None:
            t = time.perf_counter()
            prepared.outputs = run_tiles(prepared.take_job())
            prepared.timings.update(queue=0.0, infer=time.perf_counter() - t)
        return self.finish(prepared, fmt, quality)


class DirectTiles:
    """Runs a job's tiles through its model in the calling thread, `batch_size` tiles per forward
    pass (the CLI and the benchmarks' prototype server; the server uses the batcher instead)."""

    def __init__(self, models: Mapping[str, Model], batch_size: int, progress: Callable[[int], None] | None = None):
        self.models = models
        self.batch_size = batch_size
        self.progress = progress

    def __call__(self, job: TileJob) -> np.ndarray:
        model = self.models[job.model]

        def forward(batch: np.ndarray) -> np.ndarray:
            # every tile of the image gets the image's vector: one row per tile
            rows = {name: np.broadcast_to(vector, (len(batch), len(vector))) for name, vector in job.inputs.items()}
            return model.forward(batch, rows)

        return tiling.run_in_batches(
            job.tiles, forward, self.batch_size, scale=model.spec.scale, progress=self.progress, output_dtype=OUTPUT_DTYPE
        )
