"""The model alone as a user would compare against it: the SavedModel in-process on their images
whole, and on the very tiles `enhancer serve` with its defaults would cut from them.

Runs as a worker process that the efficiency benchmark keeps beside the server and asks for a
measurement between its HTTP windows, so that the raw and the end-to-end figures alternate in
time on a machine whose speed drifts. One JSON command per line on stdin, one JSON answer per line
on stdout:

    {"cmd": "info"}                          -> model, precision, device, resolved tile settings
    {"cmd": "small", "seconds": 20}          -> MP/s of the 512x512 inputs whole and as the server's tiles
    {"cmd": "big"}                           -> seconds for the 12 MP input whole and as the server's tiles
    {"cmd": "quit"}

Both ways get the server's decoded pixels and `quantization` input, at the precision the server
would use (the environment's settings, resolved for the device), one forward per tile as the CPU
default batch of 1 runs them (the server's own max batch otherwise). Megapixels are the image's.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

SMALL = "crop512"
BIG = "mosaic_12mp"


class Worker:
    def __init__(self) -> None:
        from enhancer import imaging
        from enhancer.conditioning import model_inputs
        from enhancer.config import Settings
        from enhancer.models.registry import ModelRegistry
        from enhancer.pipeline import Pipeline
        from enhancer.samples import to_unit_float

        from benchmarks.harness.inputs import ensure_inputs, group

        registry = ModelRegistry.load(Settings())
        self.runner = registry.select(None)
        spec = self.runner.spec
        self.settings = Settings().for_device(registry.device_kind)
        self.pipeline = Pipeline.from_settings(self.settings)
        self.batch = self.settings.max_batch_size

        def load(data: bytes, alone: bool):
            # both ways get float32 [0, 1] made once here: the model alone, no sample conversion timed
            image = imaging.decode(data)
            inputs = model_inputs(spec, image.info)
            prepared = self.pipeline.prepare(data, spec, alone=alone)
            job = prepared.take_job()
            return to_unit_float(image.pixels), inputs, to_unit_float(job.tiles), prepared.plan

        # the small images arrive eight at a time (normal tiles), the big one alone (solo tiles)
        self.small = [load(img.read(), alone=False) for img in group(SMALL)]
        self.small_mp = group(SMALL)[0].megapixels
        big = ensure_inputs([BIG])[BIG]
        self.big = load(big.read(), alone=True)
        self.big_mp = big.megapixels
        # every shape once (and the first call's one-off cost) before anything is timed
        self._whole(self.small[0])
        self._tiles(self.small[0])

    def _forward(self, images: np.ndarray, inputs: dict) -> np.ndarray:
        rows = {k: np.broadcast_to(v, (len(images), len(v))) for k, v in inputs.items()}
        return self.runner.forward(images, rows)

    def _whole(self, item) -> None:
        rgb, inputs, _, _ = item
        self._forward(rgb[None], inputs)

    def _tiles(self, item) -> None:
        _, inputs, tiles, _ = item
        for begin in range(0, len(tiles), self.batch):
            self._forward(tiles[begin : begin + self.batch], inputs)

    def info(self) -> dict:
        plan = self.small[0][3]
        big_plan = self.big[3]
        return {
            "model": self.runner.spec.name,
            "precision": self.runner.precision,
            "device": self.runner.device,
            **self.settings.tiling_for(self.runner.spec)._asdict(),
            "solo_tile_size": self.settings.solo_tile_for(self.runner.spec),
            "border_context": self.settings.border_context,
            "tile_buckets": self.settings.uses_tile_buckets,
            "max_batch_size": self.batch,
            "small_tiles": plan.num_tiles, "small_tile_shape": list(plan.tile_shape), "small_waste": plan.waste_ratio,
            "big_tiles": big_plan.num_tiles, "big_tile_shape": list(big_plan.tile_shape), "big_waste": big_plan.waste_ratio,
        }  # fmt: skip

    def small_run(self, seconds: float) -> dict:
        """Whole and tiled alternate image by image, so both see the same moments of the machine."""
        spent = {"whole": 0.0, "tiles": 0.0}
        cpu = {"whole": 0.0, "tiles": 0.0}  # this process's CPU time: what the work costs, whatever the load
        images = {"whole": 0, "tiles": 0}
        i = 0
        while min(spent.values()) < seconds / 2:
            item = self.small[i % len(self.small)]
            order = ("whole", "tiles") if i % 2 == 0 else ("tiles", "whole")
            for way in order:
                t, c = time.perf_counter(), time.process_time()
                (self._whole if way == "whole" else self._tiles)(item)
                spent[way] += time.perf_counter() - t
                cpu[way] += time.process_time() - c
                images[way] += 1
            i += 1
        return {
            "whole_mp_per_s": images["whole"] * self.small_mp / spent["whole"],
            "tiles_mp_per_s": images["tiles"] * self.small_mp / spent["tiles"],
            "whole_cpu_s_per_mp": cpu["whole"] / (images["whole"] * self.small_mp),
            "tiles_cpu_s_per_mp": cpu["tiles"] / (images["tiles"] * self.small_mp),
            "images_each": images["whole"],
            "seconds": spent,
        }

    def big_run(self) -> dict:
        out = {}
        for way in ("whole", "tiles"):
            t, c = time.perf_counter(), time.process_time()
            try:
                (self._whole if way == "whole" else self._tiles)(self.big)
                out[f"{way}_s"] = time.perf_counter() - t
                out[f"{way}_cpu_s"] = time.process_time() - c
            except Exception as exc:  # e.g. out of memory for the whole 12 MP in one pass
                out[f"{way}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        return out


def main() -> None:
    worker = Worker()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        cmd = command["cmd"]
        if cmd == "quit":
            break
        if cmd == "info":
            answer = worker.info()
        elif cmd == "small":
            answer = worker.small_run(float(command.get("seconds", 20)))
        elif cmd == "big":
            answer = worker.big_run()
        else:
            answer = {"error": f"unknown command {cmd!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
