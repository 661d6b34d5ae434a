"""Shared helpers: where files go, machine facts, percentiles, Prometheus text parsing, JSON."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
#: Generated inputs and scratch files (gitignored: `benchmarks/out/`).
OUT_DIR = REPO / "benchmarks" / "out"
INPUT_DIR = OUT_DIR / "inputs"
#: Committed results: raw JSON per benchmark, plots, the generated summary.
RESULTS_DIR = REPO / "benchmarks" / "results"


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def other_heavy_processes() -> list[str]:
    """Command lines of training/evaluation jobs that would make the measurements meaningless."""
    try:
        out = subprocess.run(
            ["pgrep", "-af", "TrainConfig|enhancer train|enhancer evaluate|enhancer export|training.evaluate"],
            capture_output=True, text=True, check=False,
        ).stdout
    except OSError:
        return []
    own = str(os.getpid())
    return [line[:160] for line in out.splitlines() if line and not line.startswith(own + " ")]


def machine_info() -> dict:
    """What a reader needs to compare these numbers with their own."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = "unknown"
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gib = None
    return {
        "date": now_utc(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "tensorflow": _version("tensorflow"),
        "numpy": _version("numpy"),
        "opencv": _version("opencv-python-headless"),
        "fastapi": _version("fastapi"),
        "uvicorn": _version("uvicorn"),
        "httpx": _version("httpx"),
        "git_commit": commit,
        "load_average_at_start": list(os.getloadavg()),
        "other_heavy_processes": other_heavy_processes(),
    }


def percentiles(values, qs=(50, 90, 99)) -> dict[str, float | None]:
    """Latency percentiles in seconds ("p50", ...); None when there is no sample."""
    if len(values) == 0:
        return {f"p{q}": None for q in qs}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q}": float(np.percentile(arr, q)) for q in qs}


def parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a Prometheus text exposition: {(name, sorted labels): value}."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if "{" in head:
            name, _, rest = head.partition("{")
            labels = []
            for part in rest.rstrip("}").split(","):
                if "=" in part:
                    k, _, v = part.partition("=")
                    labels.append((k.strip(), v.strip().strip('"')))
            key = (name, tuple(sorted(labels)))
        else:
            key = (head, ())
        try:
            samples[key] = float(value)
        except ValueError:
            continue
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (e.g. over every model's series;
    0.0 when there is none)."""
    wanted = set(labels.items())
    return sum(value for (key, have), value in samples.items() if key == name and wanted <= set(have))


def load_default_model():
    """The model `enhancer serve` would answer a request that names none with, loaded in-process
    (settings from the environment); TensorFlow is imported here, not when this module is."""
    from enhancer.config import Settings
    from enhancer.models.registry import ModelRegistry

    return ModelRegistry.load(Settings()).select(None)


def bound_forward(runner, info=None):
    """`runner.forward` for batches of one kind of image: the model's extra inputs (e.g. the
    `quantization` vector of a model told the file's tables) are computed once from `info`, an
    `ImageInfo` (every tile of the batch gets the same vector), or are the blind all-zero vector
    when `info` is None (what the server gives an image that is not a JPEG file)."""
    from enhancer.conditioning import model_inputs

    spec = runner.spec
    if not spec.inputs:
        return runner.forward
    if info is None:
        vectors = {name: np.zeros(length, np.float32) for name, length in spec.inputs.items()}
    else:
        vectors = model_inputs(spec, info)

    def forward(batch):
        return runner.forward(batch, {name: np.repeat(v[None], len(batch), axis=0) for name, v in vectors.items()})

    return forward


def metric_delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return metric(after, name, **labels) - metric(before, name, **labels)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def log(message: str) -> None:
    """Progress on stderr, timestamped, so a long run shows where it is."""
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
