"""The `enhancer` command: `serve` the HTTP API, `enhance` files locally, and the training commands.

`enhance` runs in-process through the same pipeline as the server (enhancer.pipeline), with the
tiles run directly instead of through the cross-request batcher, so a file enhanced here matches
what the API returns.
Heavy imports (TensorFlow, uvicorn) happen inside the commands so `enhancer --help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from enhancer import __version__
from enhancer.conditioning import Strength
from enhancer.config import Settings
from enhancer.imaging import OutputFormat, sniff_format
from enhancer.pipeline import Scale

log = logging.getLogger("enhancer.cli")

_EXTENSIONS = {".jpg": OutputFormat.jpeg, ".jpeg": OutputFormat.jpeg, ".png": OutputFormat.png, ".webp": OutputFormat.webp}


def _settings(**overrides) -> Settings:
    """Settings from the environment with the given (non-None) command-line values on top."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise SystemExit(f"enhancer: invalid settings:\n{exc}") from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _check_model_dirs(settings: Settings, *, resolve_precision: bool = False) -> None:
    """Stop with the reason when the settings name no model folder (before any heavy import);
    with `resolve_precision`, also when the precision cannot run here (which sets its environment
    variable before TensorFlow loads; ModelRegistry.load resolves it again, to the same result)."""
    from enhancer.models.contract import ModelLoadError
    from enhancer.models.registry import model_dirs
    from enhancer.precision import PrecisionError, prepare

    try:
        folders = model_dirs(settings)
        if resolve_precision:
            prepare(settings.precision, folders.values())
    except (ModelLoadError, PrecisionError) as exc:
        raise SystemExit(f"enhancer: {exc}") from None


# --- serve --------------------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> None:
    settings = _settings(host=args.host, port=args.port, log_level=args.log_level)
    _setup_logging(settings.log_level)
    _check_model_dirs(settings, resolve_precision=True)

    import uvicorn

    from enhancer.api import create_app
    from enhancer.api.auth import ApiKeyConfigError
    from enhancer.api.server import DrainingServer

    try:
        app = create_app(settings)
    except ApiKeyConfigError as exc:
        raise SystemExit(f"enhancer: {exc}") from None
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # the same trusted proxies as the per-client limits, so both see the same client address
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # type: ignore[arg-type]
    )
    DrainingServer(config, app.state.runtime, settings.shutdown_timeout_s).run()


# --- enhance ------------------------------------------------------------------------------------
def _is_image(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return sniff_format(f.read(16)) is not None
    except OSError:
        return False


def output_suffix(scale: int) -> str:
    """What an output's name adds to its input's: `_enhanced`, or `_x2` / `_x4` for an enlarged
    answer (as the API's download names)."""
    return "_enhanced" if scale == 1 else f"_x{scale}"


def plan_outputs(
    source: Path, target: Path | None, fmt: OutputFormat | None, scale: int = 1
) -> list[tuple[Path, Path, OutputFormat]]:
    """Pair every input image with its output path and format.

    A file goes to OUTPUT (format from its extension unless --format says otherwise) or beside the
    input as `<stem>_enhanced.<ext>`; a folder's images (not recursive) go to OUTPUT or
    `<folder>_enhanced/`, one `<stem>_enhanced.<ext>` per input (`_x2`, `_x4` instead of
    `_enhanced` at those scales).
    """
    suffix = output_suffix(scale)
    if source.is_file():
        if target is not None and not target.is_dir():
            chosen = fmt or _EXTENSIONS.get(target.suffix.lower(), OutputFormat.png)
            return [(source, target, chosen)]
        chosen = fmt or OutputFormat.png
        folder = target if target is not None else source.parent
        return [(source, folder / f"{source.stem}{suffix}.{chosen.extension}", chosen)]
    if not source.is_dir():
        raise SystemExit(f"enhancer: {source} does not exist")
    chosen = fmt or OutputFormat.png
    folder = target if target is not None else source.with_name(source.name + suffix)
    inputs = sorted(p for p in source.iterdir() if p.is_file() and _is_image(p))
    if not inputs:
        raise SystemExit(f"enhancer: no JPEG, PNG, WebP, BMP or TIFF images in {source}")
    stems = [p.stem for p in inputs]
    pairs = []
    for path in inputs:
        # a.jpg and a.png would both become a_enhanced.png: keep the source extension then
        stem = path.stem if stems.count(path.stem) == 1 else f"{path.stem}_{path.suffix.lstrip('.')}"
        pairs.append((path, folder / f"{stem}{suffix}.{chosen.extension}", chosen))
    return pairs


def _choose_model_dir(settings: Settings, model_dir: Path | None, scale: int | None) -> Path:
    """The one model folder `enhance` runs: --model-dir (whose scale must be --scale's, if given),
    else the served models' one for --scale (1 if not given), chosen as the server chooses it."""
    from enhancer.models.contract import ModelLoadError, read_spec
    from enhancer.models.registry import UnknownModelError, choose_default, model_dirs, model_for_scale

    try:
        if model_dir is not None:
            folder = settings.model_dir
            spec = read_spec(folder)
            if scale is not None and spec.scale != scale:
                raise SystemExit(f"enhancer: the model in {folder} has scale {spec.scale}, not {scale}; leave out --scale or pick another model")
            return folder
        folders = model_dirs(settings)
        specs = {name: read_spec(path) for name, path in folders.items()}
        default = choose_default(specs, settings.default_model)
    except ModelLoadError as exc:
        raise SystemExit(f"enhancer: {exc}") from None
    try:
        return folders[model_for_scale(specs, default, scale or 1)]
    except UnknownModelError as exc:
        if any(spec.scale == scale for spec in specs.values()):  # several: the user must pick one
            raise SystemExit(f"enhancer: {exc}".replace("name one with 'model'", "pass one's folder as --model-dir")) from None
        served = ", ".join(f"{path} (scale {specs[name].scale})" for name, path in folders.items())
        raise SystemExit(
            f"enhancer: no model with scale {scale} is configured; the models are {served}. Upscaling models "
            "are weights/upscale-x2 and weights/upscale-x4 (ENHANCER_UPSCALE_MODEL_DIRS), or pass --model-dir"
        ) from None


def _enhance(args: argparse.Namespace) -> int:
    settings = _settings(model_dir=args.model_dir, tile_size=args.tile_size, tile_overlap=args.tile_overlap)
    _setup_logging("warning" if args.quiet else settings.log_level)
    fmt = OutputFormat(args.format) if args.format else None
    folder = _choose_model_dir(settings, args.model_dir, args.scale)
    from enhancer.models.contract import read_spec

    scale = read_spec(folder).scale
    jobs = plan_outputs(Path(args.input), Path(args.output) if args.output else None, fmt, scale)

    from tqdm import tqdm

    from enhancer.errors import EnhancerError
    from enhancer.models.contract import ModelLoadError
    from enhancer.models.registry import ModelRegistry
    from enhancer.pipeline import DirectTiles, Pipeline

    try:
        models = ModelRegistry.load(settings, {folder.name: folder})
        # unset tile/batch sizes follow the device (an unset overlap each model's reach: tiling_for)
        settings = settings.for_device(models.device_kind)
        models.check_tiling(settings)
    except (ModelLoadError, ValueError) as exc:  # a model that breaks the contract, tiles it cannot take
        raise SystemExit(f"enhancer: {exc}") from None
    spec = models.select(None).spec
    pipeline = Pipeline.from_settings(settings)

    failures = 0
    # Two bars, so each file is read once: images done, and the tiles of the image being enhanced
    # (its tile count is known once it is decoded).
    with (
        tqdm(total=len(jobs), unit="image", disable=args.quiet) as images_bar,
        tqdm(unit="tile", leave=False, disable=args.quiet) as tiles_bar,
    ):
        direct = DirectTiles(models, args.batch_size or settings.max_batch_size, progress=tiles_bar.update)

        def run_tiles(job):
            tiles_bar.reset(total=len(job.tiles))
            return direct(job)

        for src, dst, out_fmt in jobs:
            images_bar.set_postfix_str(src.name)
            try:
                result = pipeline.run(
                    src.read_bytes(), spec, out_fmt, args.quality, run_tiles, Strength(args.strength),
                    alone=direct.batch_size == 1,  # one image at a time: solo tiles, one per forward pass
                )  # fmt: skip
            except EnhancerError as exc:
                failures += 1
                tqdm.write(f"skipped {src}: {exc.detail}", file=sys.stderr)
            else:
                if result.passed_through is not None and not args.quiet and result.passed_through != "strength=off":
                    why = (
                        "a coarser JPEG before, saved again at the same block grid (ENHANCER_PASS_THROUGH_RESAVED_JPEG)"
                        if result.passed_through == "resaved-jpeg"
                        else f"{result.passed_through} >= ENHANCER_PASS_THROUGH_JPEG_QUALITY"
                    )
                    tqdm.write(f"{src}: {why}, written unchanged", file=sys.stderr)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(result.body)
            images_bar.update(1)
    done = len(jobs) - failures
    print(f"enhanced {done} of {len(jobs)} image(s) -> {jobs[0][1].parent if len(jobs) > 1 else jobs[0][1]}")
    return 1 if failures else 0


# --- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The `enhancer` argument parser with all subcommands (including training ones)."""
    parser = argparse.ArgumentParser(prog="enhancer", description="Remove JPEG damage from photos.")
    parser.add_argument("--version", action="version", version=f"enhancer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="start the HTTP API (settings from ENHANCER_* variables)")
    p.add_argument("--host", help="interface to bind (default ENHANCER_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default ENHANCER_PORT or 8000)")
    p.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], help="default ENHANCER_LOG_LEVEL or info"
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("enhance", help="enhance an image file or every image in a folder, locally")
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("output", nargs="?", help="output file or folder (default: <name>_enhanced next to the input)")
    p.add_argument("--format", choices=[f.value for f in OutputFormat], help="output format (default png, or OUTPUT's extension)")
    p.add_argument("--quality", type=int, default=95, choices=range(1, 101), metavar="1-100", help="JPEG/WebP quality (default 95)")
    p.add_argument("--scale", type=int, choices=[int(s) for s in Scale],
                   help="enlarge 2x or 4x with the served upscaling model (default 1: same size; with --model-dir: "
                        "that model's scale); outputs are then named <stem>_x2 / _x4")  # fmt: skip
    p.add_argument("--model-dir", type=Path, help="model folder (default: the served models' one for --scale, "
                   "weights/dejpeg-q at scale 1)")  # fmt: skip
    p.add_argument("--tile-size", type=int, help="tile edge (default ENHANCER_TILE_SIZE, or 576 on a CPU and 1024 on a GPU)")
    p.add_argument("--tile-overlap", type=int, help="tile overlap (default ENHANCER_TILE_OVERLAP or 32)")
    p.add_argument("--batch-size", type=int, help="tiles per forward pass (default ENHANCER_MAX_BATCH_SIZE)")
    p.add_argument("--strength", choices=[s.value for s in Strength], default="auto",
                   help="auto: as the JPEG file says (other images: as the model judges); light/strong: as if saved "
                        "with half/twice the quantisation steps auto tells the model; off: the input's pixels (at --scale 2 or 4: "
                        "enlarged, not restored)")  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_enhance)

    from enhancer.training.commands import register

    register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `enhancer` console script."""
    args = build_parser().parse_args(argv)
    result = args.func(args)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
