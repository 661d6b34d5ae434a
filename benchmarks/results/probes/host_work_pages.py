import time, numpy as np, sys
from enhancer import tiling, imaging
from enhancer.imaging import OutputFormat
from benchmarks.harness.inputs import ensure_inputs
data = ensure_inputs(["mosaic_12mp"])["mosaic_12mp"].read()
tot=[]
for r in range(6):
    t0=time.perf_counter()
    img = imaging.decode(data); t1=time.perf_counter()
    p = tiling.plan_tiles(3000, 4000, 1536, 48, multiple=16, context=0, buckets=False)
    tiles = tiling.split(img.pixels, p); t2=time.perf_counter()
    out16 = np.empty(tiles.shape, np.uint16); np.multiply(tiles, 257, out=out16, dtype=np.uint16); del tiles; t3=time.perf_counter()
    rgb = tiling.stitch(out16, p, dtype=np.uint8); del out16; t4=time.perf_counter()
    body = imaging.encode(rgb, OutputFormat.png, info=img.info); t5=time.perf_counter()
    del rgb, img
    tot.append(t5-t0-(t3-t2))
    print("decode %.3f split %.3f stitch %.3f encode %.3f" % (t1-t0, t2-t1, t4-t3, t5-t4))
print(sys.argv[1], "host total per round", [round(x,2) for x in tot])
