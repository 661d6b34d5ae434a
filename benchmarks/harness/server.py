"""Start and stop the servers under test as child processes, and watch their memory.

Each server runs in its own process (as in production), started with `enhancer serve` or the
prototype-style Flask server, and is considered up when `/readyz` answers 200 (the model is loaded
and every tile shape warmed up). That answer is kept (`ServerProcess.served`): `enhancer serve`
reports there the settings it resolved and runs with, which is what a result file records, never
what the benchmark meant to set. Its log goes to `benchmarks/out/logs/`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from benchmarks.harness.common import OUT_DIR, REPO, log

LOG_DIR = OUT_DIR / "logs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server child process with a base URL, readiness wait, RSS sampling and clean stop."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int):
        self.name = name
        self.argv = argv
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = LOG_DIR / f"{name}.log"
        self.startup_s: float | None = None
        #: The server's /readyz answer once it was ready (`served` is what results record).
        self.readyz: dict | None = None

    def start(self, timeout_s: float = 600.0) -> ServerProcess:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log(f"starting {self.name} on port {self.port}")
        started = time.perf_counter()
        with open(self.log_path, "w") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = started + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}:\n{self.tail()}")
            try:
                answer = httpx.get(self.url + "/readyz", timeout=2)
                if answer.status_code == 200:
                    self.startup_s = time.perf_counter() - started
                    self.readyz = answer.json()
                    log(f"{self.name} ready after {self.startup_s:.1f} s")
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"{self.name} not ready within {timeout_s:.0f} s; see {self.log_path}")

    @property
    def served(self) -> dict:
        """What the running server says it runs with, read back from its /readyz answer: the
        settings after device defaults (tile, overlap, batch, delay, batches in flight, queue,
        timeout, XLA), device, precision and models. For the result files: a benchmark records
        this, not the ENHANCER_* values it passed (unset ones are resolved by the server)."""
        if self.readyz is None:
            raise RuntimeError(f"{self.name} has not answered /readyz with 200 yet")
        return {"server": self.name, **{k: v for k, v in self.readyz.items() if k != "status"}}

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_bytes(self) -> int:
        return process_tree_rss(self.pid)

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        log(f"stopped {self.name}")

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def child_env(**extra: object) -> dict[str, str]:
    """This environment minus any ENHANCER_* (each server gets exactly the settings passed), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENHANCER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update({k: str(v) for k, v in extra.items()})
    return env


#: Settings every `enhancer_server` starts with unless its caller sets them (`run.py --server-setting`):
#: e.g. precision=float32 to measure a driver's defaults in float32 on a CPU where auto picks bfloat16.
SERVER_SETTINGS: dict[str, str] = {}


def enhancer_server(
    name: str = "enhancer", port: int | None = None, env: dict[str, str] | None = None, **settings: object
) -> ServerProcess:
    """`enhancer serve` with ENHANCER_<KEY>=value for each keyword (e.g. max_batch_size=4) over
    `SERVER_SETTINGS`, and any other environment variables in `env`."""
    port = port or free_port()
    settings = {**SERVER_SETTINGS, **settings}
    env = child_env(**(env or {}), **{f"ENHANCER_{k.upper()}": v for k, v in settings.items()})
    env.setdefault("ENHANCER_LOG_LEVEL", "warning")
    argv = [sys.executable, "-m", "enhancer.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return ServerProcess(name, argv, env, port)


def prototype_server(name: str = "prototype", port: int | None = None, **options: object) -> ServerProcess:
    """The synchronous one-request-at-a-time Flask server of benchmarks/baselines/proto_server.py."""
    port = port or free_port()
    argv = [sys.executable, "-m", "benchmarks.baselines.proto_server", "--port", str(port)]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return ServerProcess(name, argv, child_env(), port)


def process_tree_rss(pid: int) -> int:
    """Resident set size of a process and its children, in bytes (0 if it is gone)."""
    import psutil  # the bench extra; imported here so the tests can import this module without it

    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0


class RssSampler:
    """Samples a process tree's RSS every `interval_s` on a background thread; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.02):
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = process_tree_rss(self.pid)
            self.peak = max(self.peak, rss)
            self.samples.append((time.perf_counter() - self._t0, rss))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max([self.peak] + [r for _, r in self.samples])


def kernel_peak_rss(pid: int) -> int | None:
    """The kernel's own high-water mark (VmHWM) for a process, in bytes; catches short spikes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def simulated_server(
    name: str = "simulated", port: int | None = None, *, batch_cost_ms: float = 5.0, per_tile_ms: float = 0.25,
    **settings: object,
) -> ServerProcess:
    """The real app on benchmarks/baselines/simulated.py's device (batch of n tiles = a + b*n seconds)."""
    port = port or free_port()
    env = child_env(**{f"ENHANCER_{k.upper()}": v for k, v in settings.items()})
    env.setdefault("ENHANCER_LOG_LEVEL", "warning")
    argv = [
        sys.executable, "-m", "benchmarks.baselines.simulated", "--port", str(port),
        "--batch-cost-ms", str(batch_cost_ms), "--per-tile-ms", str(per_tile_ms),
    ]
    return ServerProcess(name, argv, env, port)
