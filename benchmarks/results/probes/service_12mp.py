import asyncio, time, numpy as np
from enhancer.config import Settings
from enhancer.models.registry import ModelRegistry
from enhancer.batching import MicroBatcher
from enhancer.service import EnhanceService
from enhancer.imaging import OutputFormat
from benchmarks.harness.inputs import ensure_inputs
reg = ModelRegistry.load(Settings()); spec = reg.select(None).spec
s = Settings().for_device(reg.device_kind)
data = ensure_inputs(["mosaic_12mp"])["mosaic_12mp"].read()
async def main():
    b = MicroBatcher.from_settings({n: m for n, m in reg.items()}, s)
    await b.start()
    svc = EnhanceService.from_settings(s, b)
    for r in range(4):
        t=time.perf_counter(); res = await svc.enhance(data, spec, OutputFormat.png); 
        print("total %.2f" % (time.perf_counter()-t), {k: round(v,3) for k,v in res.timings.items()})
    await b.stop()
asyncio.run(main())
