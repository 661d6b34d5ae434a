import time, numpy as np
from enhancer.config import Settings
from enhancer.models.registry import ModelRegistry
reg = ModelRegistry.load(Settings()); m = reg.select(None)
x = np.random.default_rng(0).random((1, 1536, 1376, 3), dtype=np.float32); q={k: np.zeros((1,130),np.float32) for k in m.spec.inputs}
m.forward(x, q)
a = np.random.default_rng(1).random((3000*4000*3,), dtype=np.float32)
def work():
    t=time.perf_counter(); b = a * 1.5; b += 1; s=time.perf_counter()-t; return s
for r in range(3):
    m.forward(x, q); t_now = work()
    m.forward(x, q); time.sleep(0.5); t_later = work()
    t0=time.process_time(); time.sleep(0.3); idle_cpu = time.process_time()-t0
    m.forward(x, q); t0=time.process_time(); w0=time.perf_counter(); time.sleep(0.3); cpu_after = time.process_time()-t0
    print("numpy right after forward %.3f, 0.5 s later %.3f; process CPU in 0.3 s sleep: idle %.3f, right after forward %.3f" % (t_now, t_later, idle_cpu, cpu_after))
