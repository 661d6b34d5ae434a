#!/usr/bin/env python3
"""Build the container image from this checkout, run it, and check it as a deployment would use it.

    python deploy/container_smoke.py                  # CPU variant (what .ci/run does)
    python deploy/container_smoke.py --variant gpu    # GPU variant: by hand, too heavy for CI
    python deploy/container_smoke.py --record warm    # also write timings to benchmarks/results/

Run it with the project's virtualenv (it uses Pillow to make and read the test images) and as
root on Debian when no Docker engine is running: it then installs podman and builds with that.

Checks, each reported as PASS/FAIL with the reason:
  build      the Dockerfile builds (docker, or podman in docker format so HEALTHCHECK is kept)
  ready      GET /readyz is 200 within the image's HEALTHCHECK start period
  healthcheck  the engine runs the image's own HEALTHCHECK command and it passes
  user       PID 1 is `enhancer serve` (exec-form CMD, no shell) running as the image's
             numeric, non-root USER
  variant    CUDA wheels absent from the CPU image, present in the GPU image; TensorFlow imports
             and prints its build info; the model runs on the device we expect
  weights    every file under /app/weights has the git blob id committed for weights/
  upscale    POST /upscale of a small JPEG (multipart field `image`) is 200, a PNG of the same
             size, produced by the model (not passed through)
  drain      an upload still sending its body when the engine sends SIGTERM (`stop` with the
             compose file's stop_grace_period) gets 200; meanwhile /readyz and new uploads are 503
  exit       the container then exits with status 0 within stop_grace_period

Only where neither a Docker engine nor podman can run (not root, no apt-get, no container
support) does it exit 0 with a SKIPPED line instead.

Without a container registry (as on the project's development and CI machines) podman cannot
pull the Dockerfile's python:3.11-slim-bookworm base; a stand-in is made once with debootstrap
(Debian's python3 of the same minor version under the same name) and kept in podman's image
store, like the build layers, so later runs on the same machine reuse both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import io
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "container.json"

# Debian packages for the podman path, at the versions this script was checked with (bookworm).
# runc, not crun: crun refuses hosts with hybrid cgroups (v1 controllers + a v2 mount), like ours.
# netavark + iptables: podman's network backend, for publishing the container's port on loopback.
APT_PACKAGES = {
    "podman": "4.3.1+ds1-8+deb12u1+b3",
    "runc": "1.1.5+ds1-1+deb12u1",
    "netavark": "1.4.0-3",
    "iptables": "1.8.9-2",
    "debootstrap": "1.0.128+nmu2+deb12u2",
}
# The stand-in base: the Debian suite named in the base image's tag, with the Python that the
# official image of that tag would have (checked below, so the stand-in never lies about it).
STANDIN_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates,netbase"
STANDIN_LABEL = "enhancer.smoke.standin"
# Behind a TLS-intercepting proxy pip inside the build trusts only what the host trusts.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# podman's own defaults for a container's rlimits; lowered where this host allows less, because
# runc then refuses to start the container ("error setting rlimit ...: operation not permitted").
PODMAN_DEFAULT_NOFILE, PODMAN_DEFAULT_NPROC = 1048576, 4194304

IMAGE_TAG = {"cpu": "localhost/enhancer:cpu-smoke", "gpu": "localhost/enhancer:gpu-smoke"}
BUILD_ARGS = {"cpu": {"TF_EXTRAS": ""}, "gpu": {}}  # gpu: the Dockerfile's default (and-cuda)


# ------------------------------------------------------------------------------------ reporting
@dataclass
class Report:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, object] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append((name, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        return ok

    @property
    def failed(self) -> int:
        return sum(1 for _, ok, _ in self.checks if not ok)


def log(message: str) -> None:
    print(f"[smoke {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], *, env=None, check=True, timeout=None, quiet=False) -> subprocess.CompletedProcess:
    if not quiet:
        log("$ " + " ".join(cmd))
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:3])} ... exited {result.returncode}:\n{(result.stdout + result.stderr)[-4000:]}"
        )
    return result


# -------------------------------------------------------------------------------------- engines
class Engine:
    """docker or podman, with what differs between them."""

    def __init__(self, name: str, env: dict[str, str]):
        self.name, self.env = name, env

    def __call__(self, *args: str, check=True, timeout=None, quiet=False) -> subprocess.CompletedProcess:
        return run([self.name, *args], env=self.env, check=check, timeout=timeout, quiet=quiet)

    def inspect(self, what: str, ref: str) -> dict:
        kind = ["image", "inspect"] if what == "image" else ["container", "inspect"]
        return json.loads(self(*kind, ref, quiet=True).stdout)[0]

    def version(self) -> str:
        return self("--version", quiet=True).stdout.strip()


def cache_dir() -> Path:
    base = Path("/var/cache") if os.geteuid() == 0 else Path.home() / ".cache"
    path = base / "enhancer-container-smoke"
    path.mkdir(parents=True, exist_ok=True)
    return path


def docker_engine() -> Engine | None:
    """A Docker client that reaches a running engine (the client alone is not enough)."""
    if shutil.which("docker") is None:
        return None
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True)
    return Engine("docker", dict(os.environ)) if probe.returncode == 0 else None


def install_podman() -> None:
    pins = [f"{name}={version}" for name, version in APT_PACKAGES.items()]
    log("installing podman and friends from Debian: " + " ".join(pins))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pins], env=env)


def podman_engine() -> tuple[Engine | None, str]:
    if shutil.which("podman") is None or shutil.which("debootstrap") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            return None, "podman is not installed and this is not root on Debian (apt-get) to install it"
        install_podman()
    # A private containers.conf: the machine-wide one is left alone.
    conf = cache_dir() / "containers.conf"
    # The container may not exceed the limits podman itself runs with: this process's hard limits,
    # and for processes also the kernel's pid_max (podman's own limit was pid_max on the CI
    # machine, below the hard limit, and runc refused any nproc above it).
    nofile = min(PODMAN_DEFAULT_NOFILE, _hard_limit(resource.RLIMIT_NOFILE))
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nproc = min(PODMAN_DEFAULT_NPROC, _hard_limit(resource.RLIMIT_NPROC), pid_max)
    conf.write_text(
        "# written by deploy/container_smoke.py\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        # crun refuses hybrid cgroup hosts; no systemd as PID 1 here, so no systemd cgroups or journal
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    engine = Engine("podman", dict(os.environ, CONTAINERS_CONF=str(conf)))
    probe = engine("info", check=False, quiet=True)
    if probe.returncode != 0:
        return None, "podman is installed but cannot run here: " + probe.stderr.strip()[-500:]
    return engine, ""


def _hard_limit(which: int) -> int:
    hard = resource.getrlimit(which)[1]
    return sys.maxsize if hard == resource.RLIM_INFINITY else hard


# --------------------------------------------------------------------------------- the base image
def dockerfile_base() -> str:
    """The default of the Dockerfile's PYTHON_IMAGE argument (its FROM lines use it)."""
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    if not match:
        raise RuntimeError("Dockerfile has no `ARG PYTHON_IMAGE=<image>` default")
    return match.group(1)


def debian_mirror() -> str:
    """The Debian mirror apt uses here (the only package source the CI machine reaches)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for uri in re.findall(r"^URIs:\s*(\S+)", sources.read_text(), re.M):
            if not uri.rstrip("/").endswith("-security"):
                return uri
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        for uri in re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\w+\s", listing.read_text(), re.M):
            if not uri.rstrip("/").endswith("-security"):
                return uri
    return "http://deb.debian.org/debian"


def prepare_base(engine: Engine, report: Report) -> None:
    """Make the Dockerfile's FROM image available: pulled where a registry answers, else a stand-in."""
    base = dockerfile_base()
    report.facts["base_image"] = base
    if engine.name == "docker":
        report.facts["base"] = "pulled by docker build"
        return
    qualified = base if "/" in base.split(":")[0] else f"docker.io/library/{base}"
    if engine("image", "exists", qualified, check=False, quiet=True).returncode == 0:
        report.facts["base"] = f"{qualified} (cached)"
        return
    standin = f"localhost/{base}"
    if engine("image", "exists", standin, check=False, quiet=True).returncode == 0:
        labels = engine.inspect("image", standin).get("Labels") or {}
        report.facts["base"] = f"{standin}: stand-in, {labels.get(STANDIN_LABEL, '?')} (cached)"
        return
    started = time.monotonic()
    pulled = engine("pull", qualified, check=False, timeout=900)
    if pulled.returncode == 0:
        report.facts["base"] = f"{qualified} (pulled)"
    else:
        log("no registry (" + pulled.stderr.strip().splitlines()[-1][:200] + "): making a stand-in")
        report.facts["base"] = f"{standin}: stand-in, {make_standin(engine, base, standin)}"
    report.timings["base_prepare_s"] = round(time.monotonic() - started, 1)


def make_standin(engine: Engine, base: str, standin: str) -> str:
    """debootstrap the tag's Debian suite with its python3 and import it as `localhost/<base>`.

    It has Debian's Python in /usr/bin instead of the official image's build in /usr/local, so it
    tests the Dockerfile's own steps and start path, not the official base byte for byte."""
    match = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim-(\w+)", base)
    if not match:
        raise RuntimeError(f"cannot imitate base image {base!r}: expected python:X.Y-slim-<debian suite>")
    want_python, suite = match.groups()
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="enhancer-standin-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(["debootstrap", "--variant=minbase", f"--include={STANDIN_PACKAGES}", suite, str(rootfs), mirror],
            timeout=1800)
        found = subprocess.run([str(rootfs / "usr/bin/python3"), "--version"], capture_output=True, text=True)
        got = found.stdout.split()[-1]
        if not got.startswith(want_python + "."):
            raise RuntimeError(f"Debian {suite} has Python {got}, not {want_python}: no honest stand-in for {base}")
        # apt's downloads and lists are not part of the official slim image either
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / junk).glob("*"):
                if item.is_file():
                    item.unlink()
        description = f"debootstrap {suite} minbase from {mirror}, Python {got}"
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [engine.name, "import",
             "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "--change", "ENV LANG=C.UTF-8",
             "--change", f"LABEL {STANDIN_LABEL}=\"{description}\"",
             "--change", 'CMD ["python3"]',
             "-", standin],
            stdin=tar.stdout, env=engine.env, capture_output=True, text=True)
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise RuntimeError(f"importing the stand-in failed: {imported.stderr[-2000:]}")
    return description


# ---------------------------------------------------------------------------------------- build
def build(engine: Engine, variant: str, report: Report) -> bool:
    cmd = ["build", "-t", IMAGE_TAG[variant]]
    for key, value in BUILD_ARGS[variant].items():
        cmd += ["--build-arg", f"{key}={value}"]
    if engine.name == "podman":
        # docker format: the OCI format has no HEALTHCHECK and podman would drop it.
        # --pull=never: the base was settled above (pulled, cached or the stand-in).
        cmd += ["--format", "docker", "--pull=never"]
        if HOST_CA_BUNDLE.exists():
            cmd += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    started = time.monotonic()
    result = engine(*cmd, str(ROOT), check=False, timeout=3600)
    report.timings["build_s"] = round(time.monotonic() - started, 1)
    # the build's own log says which steps came from the layer cache
    output = result.stdout + result.stderr
    report.facts["build_steps_cached"] = len(re.findall(r"Using cache|---> Using cache|CACHED", output))
    if result.returncode != 0:
        print(output[-6000:])
        return report.check("build", False, f"`{engine.name} build` exited {result.returncode} (log above)")
    image = engine.inspect("image", IMAGE_TAG[variant])
    report.facts["image_size_bytes"] = int(image["Size"])
    return report.check("build", True, f"{IMAGE_TAG[variant]}, {image['Size'] / 1e9:.2f} GB, "
                        f"{report.timings['build_s']:.0f} s")


# ------------------------------------------------------------------------------------- HTTP bits
def request(port: int, method: str, path: str, body: bytes | None = None, headers=None, timeout=60.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def make_jpeg(width: int, height: int) -> bytes:
    """A JPEG at quality 40: below the pass-through quality, so the server runs the model on it."""
    from PIL import Image

    image = Image.radial_gradient("L").resize((width, height)).convert("RGB")
    noise = Image.effect_noise((width, height), 40).convert("RGB")
    buffer = io.BytesIO()
    Image.blend(image, noise, 0.3).save(buffer, "JPEG", quality=40)
    return buffer.getvalue()


def multipart(jpeg: bytes) -> tuple[bytes, str]:
    boundary = "enhancer-smoke-" + hashlib.sha1(jpeg).hexdigest()[:16]
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"smoke.jpg\"\r\n"
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode() + jpeg + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def png_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size if image.format == "PNG" else None
    except Exception:
        return None


def metric(port: int, name: str) -> float | None:
    status, _, body = request(port, "GET", "/metrics", timeout=10)
    match = re.search(rf"^{name} (\S+)$", body.decode(), re.M) if status == 200 else None
    return float(match.group(1)) if match else None


# ------------------------------------------------------------------------------- the smoke itself
def stop_grace_period_s() -> float:
    """docker-compose.yml's stop_grace_period: how long `stop` waits before SIGKILL."""
    match = re.search(r"^\s*stop_grace_period:\s*(\d+)(s|m)\s*$", (ROOT / "docker-compose.yml").read_text(), re.M)
    if not match:
        raise RuntimeError("docker-compose.yml: no stop_grace_period in seconds or minutes")
    return float(match.group(1)) * (60 if match.group(2) == "m" else 1)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def smoke(engine: Engine, variant: str, report: Report, gpu: bool) -> None:
    image = engine.inspect("image", IMAGE_TAG[variant])
    config = image.get("Config") or {}
    # docker keeps HEALTHCHECK under Config, podman at the top of its inspect output
    health = config.get("Healthcheck") or image.get("Healthcheck") or {}
    if not report.check("healthcheck-in-image", bool(health.get("Test")),
                        f"HEALTHCHECK {health.get('Test')!r}"):
        return
    grace_s = stop_grace_period_s()
    port = free_port()
    name = f"enhancer-smoke-{os.getpid()}"
    run_args = ["run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000"]
    if gpu:
        run_args += ["--gpus", "all"] if engine.name == "docker" else ["--device", "nvidia.com/gpu=all"]
    started = time.monotonic()
    # podman without systemd logs that it cannot set up the periodic healthcheck timer; the
    # check below runs the healthcheck itself, so that is only noise
    created = engine(*run_args, IMAGE_TAG[variant], check=False)
    if created.returncode != 0:
        report.check("start", False, f"`{engine.name} run` exited {created.returncode}: {created.stderr.strip()[-800:]}")
        engine("rm", "-f", name, check=False, quiet=True)
        return
    try:
        _checks_while_running(engine, name, port, report, started, health, grace_s, variant, gpu, config)
    finally:
        logs = engine("logs", name, check=False, quiet=True)
        report.facts["server_log_tail"] = (logs.stdout + logs.stderr).strip().splitlines()[-15:]
        if report.failed:
            print("---- container log (tail) ----\n" + "\n".join(report.facts["server_log_tail"]))
        engine("rm", "-f", name, check=False, quiet=True)


def _running(engine: Engine, name: str) -> tuple[bool, int]:
    state = engine.inspect("container", name)["State"]
    return bool(state.get("Running")), int(state.get("ExitCode", -1))


def _checks_while_running(engine, name, port, report, started, health, grace_s, variant, gpu, config):
    # -- ready within the start period
    start_period_s = health.get("StartPeriod", 0) / 1e9
    deadline, status = started + start_period_s, None
    while time.monotonic() < deadline:
        running, code = _running(engine, name)
        if not running:
            report.check("ready", False, f"the container exited with status {code} before it was ready")
            return
        try:
            status, _, body = request(port, "GET", "/readyz", timeout=5)
        except OSError:
            status = None
        if status == 200:
            break
        time.sleep(0.5)
    report.timings["ready_s"] = round(time.monotonic() - started, 1)
    if not report.check("ready", status == 200,
                        f"/readyz {status} after {report.timings['ready_s']:.1f} s "
                        f"(start period {start_period_s:.0f} s)"):
        return
    device = json.loads(body).get("device", "")
    report.facts["device"] = device

    # -- the image's own HEALTHCHECK, run by the engine
    if engine.name == "podman":
        result = engine("healthcheck", "run", name, check=False)
        state = engine.inspect("container", name)["State"].get("Health", {}).get("Status")
        report.check("healthcheck", result.returncode == 0 and state == "healthy",
                     f"`podman healthcheck run` exited {result.returncode}, status {state}")
    else:  # docker runs it on its own every interval; wait for its verdict
        deadline = time.monotonic() + (health.get("Interval", 30e9) / 1e9) * 2 + 10
        state = None
        while time.monotonic() < deadline and state != "healthy":
            state = engine.inspect("container", name)["State"].get("Health", {}).get("Status")
            time.sleep(1)
        report.check("healthcheck", state == "healthy", f"docker health status {state}")

    # -- user: PID 1 is the server (exec form), as the image's numeric non-root USER
    user = str(config.get("User", ""))
    uid = user.split(":")[0]
    status_text = engine("exec", name, "cat", "/proc/1/status", quiet=True).stdout
    cmdline = engine("exec", name, "cat", "/proc/1/cmdline", quiet=True).stdout.replace("\0", " ").strip()
    real_uid = re.search(r"^Uid:\s+(\d+)", status_text, re.M).group(1)
    report.check("user", uid.isdigit() and uid != "0" and real_uid == uid and cmdline.endswith("enhancer serve"),
                 f"image USER {user!r}, PID 1 uid {real_uid}: {cmdline!r}")

    # -- variant: CUDA wheels only in the GPU image; TensorFlow's build info; the device in use
    probe = engine("exec", name, "python", "-c",
                   "import importlib.util, json, tensorflow as tf; "
                   "info = dict(tf.sysconfig.get_build_info()); print(info); "
                   "print(json.dumps({'nvidia': importlib.util.find_spec('nvidia') is not None, "
                   "'gpus': len(tf.config.list_physical_devices('GPU')), "
                   "'cuda': info.get('cuda_version'), 'cudnn': info.get('cudnn_version')}))",
                   check=False, timeout=300)
    try:
        facts = json.loads(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        facts = None
    if facts is None:
        report.check("variant", False, f"TensorFlow did not import: {probe.stderr.strip()[-800:]}")
    else:
        report.facts["tensorflow_build_info"] = probe.stdout.strip().splitlines()[0]
        want_cuda_wheels = variant == "gpu"
        want_device = "GPU" if gpu else "CPU"
        dlopen = [line for line in probe.stderr.splitlines() if "Could not load dynamic library" in line
                  or "Cannot dlopen some GPU libraries" in line]
        ok = (facts["nvidia"] == want_cuda_wheels and device.startswith(want_device)
              and (facts["gpus"] > 0) == gpu and not (gpu and dlopen))
        report.check("variant", ok,
                     f"CUDA wheels {'present' if facts['nvidia'] else 'absent'} (want "
                     f"{'present' if want_cuda_wheels else 'absent'}); TensorFlow built for CUDA "
                     f"{facts['cuda']}, cuDNN {facts['cudnn']}; {facts['gpus']} GPU(s) visible; "
                     f"server runs on {device!r} (want {want_device})"
                     + (f"; {dlopen[0]}" if gpu and dlopen else ""))

    # -- weights: the git blob ids committed for weights/, recomputed inside the container
    committed = committed_weights()
    inside = engine("exec", name, "python", "-c", BLOB_IDS_SNIPPET, check=False, quiet=True)
    try:
        found = json.loads(inside.stdout)
    except ValueError:
        found = {}
    missing = sorted(set(committed) - set(found))
    extra = sorted(set(found) - set(committed))
    differ = sorted(p for p in set(committed) & set(found) if committed[p] != found[p])
    report.check("weights", bool(committed) and not (missing or extra or differ),
                 f"{len(committed)} committed files; in /app: {len(found)} files"
                 + (f"; missing {missing[:3]}" if missing else "")
                 + (f"; not committed {extra[:3]}" if extra else "")
                 + (f"; different {differ[:3]}" if differ else ""))

    # -- upscale: a small JPEG comes back as a PNG of the same size, made by the model
    width, height = 96, 64
    body, content_type = multipart(make_jpeg(width, height))
    t0 = time.monotonic()
    status, headers, answer = request(port, "POST", "/upscale", body, {"Content-Type": content_type})
    report.timings["upscale_ms"] = round((time.monotonic() - t0) * 1000)
    size = png_size(answer) if status == 200 else None
    passed = headers.get("X-Enhancer-Passed-Through") or headers.get("x-enhancer-passed-through")
    report.check("upscale", status == 200 and size == (width, height) and not passed,
                 f"POST /upscale {status}, PNG {size} for a {width}x{height} JPEG"
                 + (f", passed through ({passed})" if passed else ", model ran")
                 + ("" if status == 200 else f": {answer[:300]!r}"))

    # -- drain: SIGTERM (via the engine's stop) while an upload is still sending its body
    drain_and_exit(engine, name, port, report, grace_s)


BLOB_IDS_SNIPPET = """
import hashlib, json, os
root, ids = "/app", {}
for folder, _, files in os.walk("/app/weights"):
    for name in files:
        path = os.path.join(folder, name)
        data = open(path, "rb").read()
        ids[os.path.relpath(path, root)] = hashlib.sha1(b"blob %d\\0" % len(data) + data).hexdigest()
print(json.dumps(ids))
"""


def committed_weights() -> dict[str, str]:
    """{path under weights/: git blob id} as committed (HEAD), or of the files on disk outside git."""
    listing = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "HEAD", "weights"],
                             capture_output=True, text=True)
    if listing.returncode == 0 and listing.stdout.strip():
        ids = {}
        for line in listing.stdout.splitlines():
            meta, path = line.split("\t", 1)
            ids[path] = meta.split()[2]
        return ids
    ids = {}
    for path in sorted((ROOT / "weights").rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            ids[path.relative_to(ROOT).as_posix()] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return ids


def drain_and_exit(engine: Engine, name: str, port: int, report: Report, grace_s: float) -> None:
    width, height = 80, 48
    body, content_type = multipart(make_jpeg(width, height))
    half = len(body) // 2
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest("POST", "/upscale")
    conn.putheader("Content-Type", content_type)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[:half])
    # the server counts the upload as in flight once its headers are in
    deadline = time.monotonic() + 10
    while (metric(port, "enhancer_uploads_in_flight") or 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    in_flight = metric(port, "enhancer_uploads_in_flight")

    stopped: dict[str, object] = {}

    def stop() -> None:
        t0 = time.monotonic()
        # `stop -t N`: SIGTERM, then SIGKILL after N s, as `docker compose stop` with stop_grace_period
        result = engine("stop", "-t", str(int(grace_s)), name, check=False, timeout=grace_s + 60)
        stopped.update(rc=result.returncode, seconds=time.monotonic() - t0, err=result.stderr[-500:])

    signal_sent = time.monotonic()
    stopper = threading.Thread(target=stop, daemon=True)
    stopper.start()
    # draining: /readyz turns 503 and a new upload is refused, while the port stays open
    ready_status = new_status = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            ready_status = request(port, "GET", "/readyz", timeout=5)[0]
        except OSError:
            ready_status = None
        if ready_status == 503:
            break
        time.sleep(0.1)
    if ready_status == 503:
        new_body, new_type = multipart(make_jpeg(32, 32))
        try:
            new_status = request(port, "POST", "/upscale", new_body, {"Content-Type": new_type}, timeout=10)[0]
        except OSError as error:
            new_status = f"no answer ({error})"
    # the rest of the in-flight upload, after the signal
    try:
        conn.send(body[half:])
        response = conn.getresponse()
        status, answer = response.status, response.read()
    except OSError as error:
        status, answer = f"no answer ({error})", b""
    finally:
        conn.close()
    size = png_size(answer) if status == 200 else None
    report.check("drain", in_flight == 1 and ready_status == 503 and new_status == 503
                 and status == 200 and size == (width, height),
                 f"upload in flight ({in_flight}) at SIGTERM answered {status} with PNG {size}; "
                 f"meanwhile /readyz {ready_status}, a new upload {new_status}")

    stopper.join(grace_s + 90)
    running, code = _running(engine, name)
    seconds = stopped.get("seconds", time.monotonic() - signal_sent)
    report.timings["stop_s"] = round(float(seconds), 1)
    report.check("exit", not running and code == 0 and stopped.get("rc") == 0 and seconds < grace_s,
                 f"exit status {code} {float(seconds):.1f} s after SIGTERM "
                 f"(stop_grace_period {grace_s:.0f} s; `{engine.name} stop` exited {stopped.get('rc')})")


# ------------------------------------------------------------------------------------ recording
def machine_facts() -> dict[str, object]:
    cpu = "unknown"
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True)
    match = re.search(r"^Model name:\s*(.+)$", lscpu.stdout, re.M)
    if match:
        cpu = match.group(1).strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def record(path: Path, name: str, report: Report, engine: Engine, variant: str, argv: list[str]) -> None:
    data = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    data["machine"] = machine_facts()
    data["runs"][name] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python deploy/container_smoke.py " + " ".join(argv),
        "engine": engine.version(),
        # the machine is shared: how busy it was says how far the timings can be compared
        "load_average_1_5_15_min_at_end": [round(x, 2) for x in os.getloadavg()],
        "variant": variant,
        "timings": report.timings,
        "facts": {k: v for k, v in report.facts.items() if k != "server_log_tail"},
        "checks": {n: ("PASS" if ok else "FAIL") + ": " + detail for n, ok, detail in report.checks},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    log(f"recorded run {name!r} in {path}")


def forget_cache(engine: Engine, variant: str) -> None:
    """--cold: drop this script's images and the dangling build layers, as on a new machine."""
    for ref in (IMAGE_TAG[variant], f"localhost/{dockerfile_base()}"):
        engine("rmi", "-f", ref, check=False)
    engine("image", "prune", "-f", check=False)


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--gpu", action="store_true",
                        help="give the container the host's GPUs and expect the model on a GPU (gpu variant)")
    parser.add_argument("--cold", action="store_true",
                        help="first remove the stand-in base, this script's image and dangling layers")
    parser.add_argument("--record", metavar="NAME",
                        help=f"write timings and results as run NAME into {RESULTS.relative_to(ROOT)}")
    parser.add_argument("--results", type=Path, default=RESULTS, metavar="FILE",
                        help="the file --record writes (for runs from a scratch copy of the checkout)")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if args.gpu and args.variant != "gpu":
        parser.error("--gpu needs --variant gpu (the CPU image has no CUDA libraries)")
    try:
        import PIL  # noqa: F401
    except ImportError:
        print("container smoke: needs Pillow; run it with the project's virtualenv (.venv/bin/python)")
        return 2

    total_started = time.monotonic()
    engine = docker_engine()
    if engine is None:
        engine, why = podman_engine()
        if engine is None:
            print(f"SKIPPED container smoke: no Docker engine answers `docker info`, and {why}")
            return 0
    log(f"engine: {engine.version()}; variant {args.variant}")
    report = Report()
    if args.cold:
        forget_cache(engine, args.variant)
    prepare_base(engine, report)
    if build(engine, args.variant, report):
        smoke(engine, args.variant, report, gpu=args.gpu)
    report.timings["total_s"] = round(time.monotonic() - total_started, 1)
    if args.record:
        record(args.results, args.record, report, engine, args.variant, argv)
    passed = len(report.checks) - report.failed
    log("timings: " + ", ".join(f"{k} {v}" for k, v in report.timings.items()))
    print(f"container-smoke: {passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
