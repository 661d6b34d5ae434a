"""Does oneDNN's BF16 math mode change anything on this CPU? One convolution and one matmul.

Run it twice, with and without ONEDNN_DEFAULT_FPMATH_MODE=BF16 (read when TensorFlow loads), and
once more with ONEDNN_VERBOSE=1 to see which kernel oneDNN picks; identical printed outputs mean
float32 kernels ran. Results: benchmarks/results/onednn_bf16_probe.txt (see RESULTS.md).

    ONEDNN_DEFAULT_FPMATH_MODE=BF16 python -m benchmarks.drivers.onednn_bf16_probe
"""

import os
import time

import numpy as np
import tensorflow as tf

x = tf.constant(np.random.default_rng(0).random((1, 256, 256, 64)).astype(np.float32))
k = tf.constant(np.random.default_rng(1).random((3, 3, 64, 64)).astype(np.float32))
conv = tf.function(lambda: tf.nn.conv2d(x, k, 1, "SAME"))
y = conv().numpy()
t = time.perf_counter()
for _ in range(20):
    conv()
conv_s = (time.perf_counter() - t) / 20
a = tf.constant(np.random.default_rng(2).random((1024, 1024)).astype(np.float32))
matmul = tf.function(lambda: tf.matmul(a, a))
z = matmul().numpy()
t = time.perf_counter()
for _ in range(20):
    matmul()
matmul_s = (time.perf_counter() - t) / 20
print(os.environ.get("ONEDNN_DEFAULT_FPMATH_MODE"), f"conv ms {conv_s * 1e3:.1f}",
      f"matmul GFLOP/s {2 * 1024**3 / matmul_s / 1e9:.0f}", y[0, 0, 0, 0], z[0, 0])  # fmt: skip
