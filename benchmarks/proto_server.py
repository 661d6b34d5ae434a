"""The prototype's way of serving, for comparison: a synchronous Flask app, one request at a time.

Same model (the SavedModel through `enhancer.model`), same decode, tiling and encode code as the
real server, so the comparison isolates the serving design: here each request is decoded,
run tile batch by tile batch, stitched and encoded before the next request is even read
(Werkzeug's server with threaded=False, processes=1); nothing overlaps and tiles of different
requests never share a batch.

    python -m benchmarks.proto_server --port 8001
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
from flask import Flask, Response, jsonify, request

from enhancer import imaging, tiling
from enhancer.config import Settings
from enhancer.imaging import OutputFormat


def create_app(tile_size: int, tile_overlap: int, batch_size: int) -> Flask:
    from enhancer.model import load_model

    settings = Settings()
    runner = load_model(settings.model_dir)
    runner.warm_up(tiling.bucket_shapes(tile_size), batch_size)
    app = Flask("prototype")

    @app.get("/readyz")
    def readyz():
        return jsonify(status="ready", device=runner.device)

    @app.post("/upscale")
    def upscale():
        upload = request.files.get("image")
        if upload is None:
            return jsonify(detail="missing field 'image'"), 422
        fmt = OutputFormat(request.args.get("format", "png"))
        quality = int(request.args.get("quality", 95))
        t0 = time.perf_counter()
        image = imaging.decode(upload.read())
        t1 = time.perf_counter()
        rgb = tiling.enhance_tiled(image.rgb, runner.forward, tile_size, tile_overlap, batch_size)
        np.clip(rgb, 0.0, 1.0, out=rgb)
        t2 = time.perf_counter()
        body = imaging.encode(rgb, fmt, quality=quality, info=image.info)
        t3 = time.perf_counter()
        timing = f"decode;dur={(t1 - t0) * 1000:.1f}, infer;dur={(t2 - t1) * 1000:.1f}, encode;dur={(t3 - t2) * 1000:.1f}"
        return Response(body, mimetype=fmt.media_type, headers={"Server-Timing": timing})

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
