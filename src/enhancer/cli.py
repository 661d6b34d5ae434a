"""The `enhancer` command: `serve` the HTTP API, `enhance` files locally, and the training commands.

`enhance` runs in-process through the same decoding, tiling and model code as the server (without
the HTTP layer or the cross-request batcher), so a file enhanced here matches what the API returns.
Heavy imports (TensorFlow, uvicorn) happen inside the commands so `enhancer --help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from enhancer import __version__
from enhancer.config import Settings
from enhancer.imaging import SUPPORTED_NAMES, OutputFormat, sniff_format

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


def _check_model_dir(model_dir: Path) -> None:
    if not (Path(model_dir) / "saved_model.pb").is_file():
        raise SystemExit(
            f"enhancer: no SavedModel at {model_dir}. Run from the repository root (weights/dejpeg) "
            "or set ENHANCER_MODEL_DIR to a SavedModel directory."
        )


# --- serve --------------------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> None:
    settings = _settings(host=args.host, port=args.port, log_level=args.log_level)
    _setup_logging(settings.log_level)
    _check_model_dir(settings.model_dir)

    import uvicorn

    from enhancer.api import create_app
    from enhancer.api.server import DrainingServer

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
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


def plan_outputs(source: Path, target: Path | None, fmt: OutputFormat | None) -> list[tuple[Path, Path, OutputFormat]]:
    """Pair every input image with its output path and format.

    A file goes to OUTPUT (format from its extension unless --format says otherwise) or beside the
    input as `<stem>_enhanced.<ext>`; a folder's images (not recursive) go to OUTPUT or
    `<folder>_enhanced/`, one `<stem>_enhanced.<ext>` per input.
    """
    if source.is_file():
        if target is not None and not target.is_dir():
            chosen = fmt or _EXTENSIONS.get(target.suffix.lower(), OutputFormat.png)
            return [(source, target, chosen)]
        chosen = fmt or OutputFormat.png
        folder = target if target is not None else source.parent
        return [(source, folder / f"{source.stem}_enhanced.{chosen.extension}", chosen)]
    if not source.is_dir():
        raise SystemExit(f"enhancer: {source} does not exist")
    chosen = fmt or OutputFormat.png
    folder = target if target is not None else source.with_name(source.name + "_enhanced")
    inputs = sorted(p for p in source.iterdir() if p.is_file() and _is_image(p))
    if not inputs:
        raise SystemExit(f"enhancer: no {SUPPORTED_NAMES} images in {source}")
    stems = [p.stem for p in inputs]
    pairs = []
    for path in inputs:
        # a.jpg and a.png would both become a_enhanced.png: keep the source extension then
        stem = path.stem if stems.count(path.stem) == 1 else f"{path.stem}_{path.suffix.lstrip('.')}"
        pairs.append((path, folder / f"{stem}_enhanced.{chosen.extension}", chosen))
    return pairs


def _enhance(args: argparse.Namespace) -> int:
    settings = _settings(model_dir=args.model_dir, tile_size=args.tile_size, tile_overlap=args.tile_overlap)
    _setup_logging("warning" if args.quiet else settings.log_level)
    fmt = OutputFormat(args.format) if args.format else None
    jobs = plan_outputs(Path(args.input), Path(args.output) if args.output else None, fmt)
    _check_model_dir(settings.model_dir)

    from tqdm import tqdm

    from enhancer import imaging, tiling
    from enhancer.errors import EnhancerError
    from enhancer.model import load_model_for
    from enhancer.service import pass_through_reason

    model = load_model_for(settings)
    settings = settings.for_device(model.device_kind)  # unset tile/batch sizes follow the device
    batch_size = args.batch_size or settings.max_batch_size

    def tiles_for(path: Path) -> int:
        with path.open("rb") as f:
            size = imaging.read_image_size(f.read(1 << 20))  # the header is near the start
        if size is None:
            return 0
        return tiling.plan_tiles(size[1], size[0], settings.tile_size, settings.tile_overlap).num_tiles

    failures = 0
    with tqdm(total=sum(tiles_for(src) for src, _, _ in jobs), unit="tile", disable=args.quiet) as bar:
        for src, dst, out_fmt in jobs:
            bar.set_postfix_str(src.name)
            try:
                image = imaging.decode(src.read_bytes())
            except EnhancerError as exc:
                failures += 1
                tqdm.write(f"skipped {src}: {exc.detail}", file=sys.stderr)
                continue
            plan = tiling.plan_tiles(image.info.height, image.info.width, settings.tile_size, settings.tile_overlap)
            expected = tiles_for(src)
            if expected != plan.num_tiles:  # header unreadable by Pillow: fix the bar's total
                bar.total += plan.num_tiles - expected
                bar.refresh()
            reason = pass_through_reason(image.info, settings.pass_through_jpeg_quality)
            if reason is not None:
                rgb = image.rgb
                bar.update(plan.num_tiles)
                if not args.quiet:
                    tqdm.write(f"{src}: {reason} >= ENHANCER_PASS_THROUGH_JPEG_QUALITY, written unchanged", file=sys.stderr)
            else:
                rgb = tiling.enhance_tiled(
                    image.rgb, model.forward, settings.tile_size, settings.tile_overlap, batch_size, progress=bar.update
                )
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(imaging.encode(rgb, out_fmt, quality=args.quality, info=image.info))
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
    p.add_argument("--model-dir", type=Path, help="SavedModel directory (default ENHANCER_MODEL_DIR or weights/dejpeg)")
    p.add_argument("--tile-size", type=int, help="tile edge (default ENHANCER_TILE_SIZE or 512)")
    p.add_argument("--tile-overlap", type=int, help="tile overlap (default ENHANCER_TILE_OVERLAP or 32)")
    p.add_argument("--batch-size", type=int, help="tiles per forward pass (default ENHANCER_MAX_BATCH_SIZE)")
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
