# syntax=docker/dockerfile:1
#
# enhancer: the restoration server with the committed weights, for `docker compose up` on a GPU host.
# The same image also runs on a host without a GPU (TensorFlow falls back to the CPU); for a smaller
# CPU-only image build with `--build-arg TF_EXTRAS=` (docker-compose.cpu.yml does that).
#
# Base image: python:3.11-slim-bookworm + `tensorflow[and-cuda]` from pip, not tensorflow/tensorflow:*-gpu.
# - The Linux `tensorflow` wheel is one build for CPU and GPU. TF 2.21.0's wheel reports
#   (tf.sysconfig.get_build_info()) CUDA 12.5.1, cuDNN 9, kernels for sm_60/70/80/89 + compute_90 PTX,
#   and its `and-cuda` extra pins the matching user-space libraries as pip wheels
#   (nvidia-cudnn-cu12 >=9.3,<10, nvidia-cublas-cu12 >=12.5.3,<13, ...), which TensorFlow loads from
#   site-packages by itself. CUDA, cuDNN and TensorFlow are thus resolved together by pip, from the
#   same package index and pins as our own dependencies; only the NVIDIA driver comes from the host
#   (through nvidia-container-toolkit). No CUDA base image, no LD_LIBRARY_PATH.
# - Python 3.11 is what the test suite runs on (pyproject: >=3.11,<3.14; TF 2.21 wheels: 3.10-3.13).
# - TF_VERSION pins the exact TensorFlow inside pyproject's range (tensorflow>=2.18,<2.22) that the
#   tests ran against; tests/test_deployment.py checks it stays inside that range.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with TensorFlow and the package, copied whole into the runtime stage ----
FROM ${PYTHON_IMAGE} AS build
ARG TF_VERSION=2.21.0
# "and-cuda" for the GPU image; empty for a CPU-only image (without the CUDA wheels: several GB smaller).
ARG TF_EXTRAS=and-cuda
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# TensorFlow (and the CUDA wheels) first, in their own layer: the largest download, and it does not
# change when the source does.
RUN pip install "tensorflow${TF_EXTRAS:+[${TF_EXTRAS}]}==${TF_VERSION}"
# The package itself, installed (not editable) from this checkout.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . "tensorflow==${TF_VERSION}"

# ---- runtime -------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# Same path as in the build stage: the venv's scripts and TensorFlow's $ORIGIN-relative search for
# the CUDA wheels depend on it.
COPY --from=build /opt/venv /opt/venv
RUN groupadd --system --gid 10001 enhancer \
    && useradd --system --uid 10001 --gid enhancer --create-home --home-dir /home/enhancer enhancer
WORKDIR /app
# The committed weights, so the image works on its own. docker-compose.yml bind-mounts ./weights
# over this directory so a model can be swapped without rebuilding.
COPY weights /app/weights
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENHANCER_HOST=0.0.0.0 \
    ENHANCER_PORT=8000 \
    ENHANCER_MODEL_DIR=/app/weights/dejpeg
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8000
# /readyz is 200 only once the model is loaded and warmed up, and 503 again while shutting down.
# start-period covers model load + warm-up of every tile bucket (slowest on CPU).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# Exec form: the server is PID 1 and receives SIGTERM itself (enhancer serve: /readyz and new
# uploads 503, in-flight requests finish, exit, all within ENHANCER_SHUTDOWN_TIMEOUT_S). A
# shell-form CMD would put /bin/sh in between, which does not forward the signal.
CMD ["enhancer", "serve"]
