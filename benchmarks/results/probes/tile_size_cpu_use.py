import time, numpy as np
from enhancer import imaging
from enhancer.config import Settings
from enhancer.models.registry import ModelRegistry
from enhancer.samples import to_unit_float
from enhancer.conditioning import model_inputs
from benchmarks.harness.inputs import ensure_inputs
reg = ModelRegistry.load(Settings()); runner = reg.select(None); spec = runner.spec
data = ensure_inputs(["mosaic_12mp"])["mosaic_12mp"].read()
img = imaging.decode(data); inputs = model_inputs(spec, img.info)
def fw(x): return runner.forward(x, {k: np.broadcast_to(v,(len(x),len(v))) for k,v in inputs.items()})
px = to_unit_float(img.pixels)
for T in (16, 64, 128, 256, 544, 1040, 2000):
    x = np.ascontiguousarray(px[None, :T, :T]); fw(x); fw(x)
    n = max(3, int(3e6//(T*T)))
    t=time.perf_counter(); c=time.process_time()
    for i in range(n): fw(x)
    w=(time.perf_counter()-t)/n
    print(T, "ms/call", round(w*1e3,1), "MP/s", round(T*T/w/1e6,2), "cpu/wall", round((time.process_time()-c)/n/w,2))
