"""The prototype's way of serving, for comparison: a synchronous Flask app, one request at a time.

Same model and the same pipeline as the real server (`enhancer.pipeline`: decode, tiling, stitch,
encode), so the comparison isolates the serving design: here each request goes through the whole
pipeline, its tiles run directly tile batch by tile batch, before the next request is even read
(Werkzeug's server with threaded=False, processes=1); nothing overlaps and tiles of different
requests never share a batch. Unlike the server it runs the model on every image (no
pass-through), as the prototype did.

    python -m benchmarks.baselines.proto_server --port 8001
"""

from __future__ import annotations

import argparse
import logging

from flask import Flask, Response, jsonify, request

from enhancer import tiling
from enhancer.imaging import OutputFormat


def create_app(tile_size: int, tile_overlap: int, batch_size: int) -> Flask:
    from enhancer.config import Settings
    from enhancer.models.registry import ModelRegistry
    from enhancer.pipeline import STAGES, DirectTiles, Pipeline

    settings = Settings()
    models = ModelRegistry.load(settings)
    runner = models.select(None)
    runner.warm_up(tiling.bucket_shapes(tile_size, runner.spec.size_multiple), batch_size)
    pipeline = Pipeline(tile_size=tile_size, tile_overlap=tile_overlap)  # no limits, no pass-through
    run_tiles = DirectTiles(models, batch_size)
    app = Flask("prototype")

    @app.get("/readyz")
    def readyz():
        return jsonify(
            status="ready", device=runner.device, precision=runner.precision,
            models=[{"name": runner.spec.name, "scale": runner.spec.scale, "default": True}],
            settings={"tile_size": tile_size, "tile_overlap": tile_overlap, "max_batch_size": batch_size},
        )

    @app.post("/upscale")
    def upscale():
        upload = request.files.get("image")
        if upload is None:
            return jsonify(detail="missing field 'image'"), 422
        fmt = OutputFormat(request.args.get("format", "png"))
        quality = int(request.args.get("quality", 95))
        result = pipeline.run(upload.read(), runner.spec, fmt, quality, run_tiles)
        timing = ", ".join(f"{stage};dur={result.timings[stage] * 1000:.1f}" for stage in STAGES)
        return Response(result.body, mimetype=fmt.media_type, headers={"Server-Timing": timing})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="synchronous one-request-at-a-time Flask server")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--tile-overlap", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(args.tile_size, args.tile_overlap, args.batch_size)
    app.run(host="127.0.0.1", port=args.port, threaded=False, processes=1)


if __name__ == "__main__":
    main()
