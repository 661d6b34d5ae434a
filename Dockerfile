# syntax=docker/dockerfile:1
#
# enhancer: the restoration server with the committed weights, for `docker compose up` on a GPU host.
# The same image also runs on a host without a GPU (TensorFlow falls back to the CPU); for a smaller
# CPU-only image build with `--build-arg TF_EXTRAS=` (docker-compose.cpu.yml does that).
# deploy/container_smoke.py builds the CPU variant, runs it and checks it (in CI); see
# docs/DEPLOYMENT.md for that and for the GPU variant's check.
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
#   tests ran against; tests/deploy/test_deployment.py checks it stays inside that range.
# - deploy/image-constraints.txt pins every other Python package of both variants (PIP_CONSTRAINT),
#   so a rebuild installs what was built and checked before, not whatever is newest that day.
#
# One stage, ordered from what changes least to what changes most, so that a rebuild after a source
# change reruns only the last, small pip step and reuses the TensorFlow and dependency layers. (A
# separate build stage bought nothing here: nothing is compiled, and the whole virtualenv was copied
# into the runtime stage, which podman re-hashed on every build, even with nothing changed.)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE}
ARG TF_VERSION=2.21.0
# "and-cuda" for the GPU image; empty for a CPU-only image (without the CUDA wheels: several GB smaller).
ARG TF_EXTRAS=and-cuda
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/image-constraints.txt
COPY deploy/image-constraints.txt /src/image-constraints.txt
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# TensorFlow (and the CUDA wheels) first, in their own layer: the largest download, and it does not
# change when the source does.
RUN pip install "tensorflow${TF_EXTRAS:+[${TF_EXTRAS}]}==${TF_VERSION}"
# The package's other dependencies, read from pyproject.toml alone (not README.md or src/), so that
# editing those does not download them again.
COPY pyproject.toml /src/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "tensorflow==${TF_VERSION}" \
    && rm /tmp/requirements.txt
RUN groupadd --system --gid 10001 enhancer \
    && useradd --system --uid 10001 --gid enhancer --create-home --home-dir /home/enhancer enhancer
# The committed weights, so the image works on its own. docker-compose.yml bind-mounts ./weights
# over this directory so a model can be swapped without rebuilding.
COPY weights /app/weights
# The package itself, installed (not editable) from this checkout; its dependencies are already
# there, and `pip check` fails the build if pyproject.toml asked for something they do not satisfy.
WORKDIR /src
COPY README.md ./
COPY src ./src
RUN pip install --no-deps . && pip check && rm -rf build src/*.egg-info
WORKDIR /app
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENHANCER_HOST=0.0.0.0 \
    ENHANCER_PORT=8000 \
    ENHANCER_MODEL_DIR=/app/weights/dejpeg-q
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
