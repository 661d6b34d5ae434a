"""Which arithmetic the models run in, decided before TensorFlow is imported.

bfloat16 on a CPU takes one of two forms:

* oneDNN's "BF16 math mode", with AMX (`amx_bf16`) only: float32 tensors in and out, convolution
  and matmul inputs rounded to bfloat16, products accumulated in float32. oneDNN takes the mode
  from the environment variable `ONEDNN_DEFAULT_FPMATH_MODE`, read once when TensorFlow loads, so
  it is process-wide. It moves answers least, and gains least (benchmarks/RESULTS.md).
* TensorFlow's bfloat16 graph rewrite for oneDNN (Grappler's `auto_mixed_precision_onednn_bfloat16`,
  switched per model by `SavedModelRunner.forward`), on any CPU with `avx512_bf16` or `amx_bf16`,
  limited to the convolutions (`REWRITE_KEEPS_FLOAT32`): they run oneDNN's bfloat16 kernels with
  bfloat16 activations between them, while the matrix products of the JPEG projection stay
  float32. It is the faster form on both kinds of CPU (measured: benchmarks/RESULTS.md) and
  moves answers more, by how much differs per model, so `auto` turns it on per model: for those
  whose metadata.json records a graph-rewrite PSNR change within `MAX_BFLOAT16_PSNR_CHANGE_DB`
  (measured on such a CPU: `benchmarks/drivers/precision.py --record`); the others, and any not
  measured, stay float32. Grappler's switch is global, so the runner sets it for its own model
  before every call.

So the precision is resolved, and the variables set, before the first `import tensorflow`: `prepare` is called by `ModelRegistry.load` before it
imports the runner (the path of `enhancer serve`, `uvicorn --factory enhancer.api:factory` and
`enhancer enhance`), and by the CLI commands before anything heavy, so a bad setting stops them at
once. This module imports neither TensorFlow nor anything that does.

`ENHANCER_PRECISION`:

* `auto` (default): the graph rewrite for each model whose recorded rewrite change is within that
  limit, float32 for the rest, on any CPU with bfloat16 instructions; where no served model may
  take the rewrite, with AMX the math mode (unless a served model's metadata.json records a
  math-mode PSNR change over the limit, measured by `enhancer export`), without AMX float32 (the
  math mode would be no bfloat16 at all there: oneDNN keeps its float32 kernels, measured on an
  AMD EPYC, benchmarks/RESULTS.md); float32 on CPUs with neither; on a GPU the mixed_float16 path
  (decided later, once TensorFlow sees the GPU: `saved_model.configure_device`).
* `float32`, `mixed_float16`: as before.
* `bfloat16`: bfloat16 CPU math for every model, even one whose record is over the limit: the math
  mode with AMX, the graph rewrite of the convolutions with `avx512_bf16` alone (logged, with what
  it costs). On a CPU without bfloat16 instructions (or with oneDNN switched off) it is a start-up
  error, not a fallback: oneDNN would silently run float32, and whoever set it explicitly expects
  the speed it does not get.

The math mode is process-wide, so with several models one over the limit keeps all of them in
float32; the graph rewrite is chosen per model.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SETTINGS = ("auto", "float32", "bfloat16", "mixed_float16")
#: oneDNN's environment variable for its default floating-point math mode.
FPMATH_VARIABLE = "ONEDNN_DEFAULT_FPMATH_MODE"
#: /proc/cpuinfo flags of x86 CPUs with bfloat16 dot-product instructions.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
#: AMX's bfloat16 flag: the one with which oneDNN's BF16 math mode changes the kernels it runs.
AMX_BFLOAT16_FLAG = "amx_bf16"
#: Why `auto` passes over avx512_bf16 alone when no served model may take the graph rewrite.
NO_AMX_REASON = (
    "this CPU has avx512_bf16 but no AMX (amx_bf16); oneDNN runs its float32 convolution kernels there "
    "even in BF16 math mode, and no served model records a bfloat16 graph-rewrite PSNR change within "
    "0.05 dB, so auto keeps float32"
)
#: Environment variable of TensorFlow's mixed-precision rewrite: op types taken off its list of
#: ops to convert. The matrix products are those of the JPEG projection (a DCT per 8x8 block),
#: whose coefficients must stay finer than the file's quantisation steps.
REWRITE_ALLOWLIST_REMOVE_VARIABLE = "TF_AUTO_MIXED_PRECISION_GRAPH_REWRITE_ALLOWLIST_REMOVE"
REWRITE_KEEPS_FLOAT32 = "BatchMatMul,BatchMatMulV2,BatchMatMulV3,Einsum,MatMul"
#: A model whose recorded float32 -> bfloat16 PSNR change is larger than this (either sign) gets
#: float32 under `auto` (the issue's tolerance for a change nobody should see).
MAX_BFLOAT16_PSNR_CHANGE_DB = 0.05
#: metadata.json key `enhancer export` records the measurement under.
METADATA_KEY = "bfloat16"
#: The key, inside that record, of the graph rewrite's change measured on an avx512_bf16 CPU.
REWRITE_METADATA_KEY = "graph_rewrite"
#: Grappler's switch for the rewrite (tf.config.optimizer.set_experimental_options).
REWRITE_OPTION = "auto_mixed_precision_onednn_bfloat16"


#: Log messages already written: ModelRegistry.load resolves again what the CLI resolved.
_logged: set[str] = set()


def _log_once(level: int, message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.log(level, "%s", message)


class PrecisionError(ValueError):
    """An explicit precision this machine (or this process) cannot run."""


@dataclass(frozen=True)
class Precision:
    """The CPU precision chosen for this process, and why (for the start-up log and /readyz)."""

    setting: str  #: ENHANCER_PRECISION as given
    name: str  #: "float32", "bfloat16" or "mixed_float16" (the last decided on the device)
    reason: str
    graph_rewrite: bool = False  #: bfloat16 by TensorFlow's graph rewrite (not oneDNN's math mode)
    #: with graph_rewrite: the models (folder names) that stay float32 all the same
    float32_models: frozenset[str] = frozenset()

    def for_model(self, name: str) -> str:
        """What model `name` runs in (the plan, or float32 where the rewrite passes it over)."""
        if self.graph_rewrite and name in self.float32_models:
            return (
                f"float32 ({self.setting}: {name} records no bfloat16 graph-rewrite PSNR change within "
                f"{MAX_BFLOAT16_PSNR_CHANGE_DB} dB)"
            )
        return self.describe()

    def describe(self) -> str:
        return f"{self.name} ({self.reason})"


def cpu_bfloat16_flags(cpuinfo: str) -> list[str]:
    """The bfloat16 flags every CPU in `cpuinfo` has (/proc/cpuinfo text, or one line of flags as
    `lscpu` prints it). Pure, so a flags fixture can stand in for the machine."""
    rows = []
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "flags":
            rows.append(set(value.split()))
    if not rows:  # a bare flags string
        rows = [set(cpuinfo.split())]
    return [flag for flag in BFLOAT16_CPU_FLAGS if all(flag in row for row in rows)]


def takes_graph_rewrite(flags: Iterable[str]) -> bool:
    """Whether `ENHANCER_PRECISION=bfloat16` on a CPU with these bfloat16 flags (`cpu_bfloat16_flags`)
    is the graph rewrite: it has bfloat16 instructions but not AMX, where the math mode would change
    nothing. (With AMX, it is the math mode, which keeps every model within the limit.)"""
    flags = list(flags)
    return bool(flags) and AMX_BFLOAT16_FLAG not in flags


def read_cpuinfo() -> str:
    """This machine's /proc/cpuinfo ("" where there is none: no bfloat16 is assumed)."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def recorded_change(model_dir: Path, *, graph_rewrite: bool = False) -> float | None:
    """The float32 -> bfloat16 PSNR change (dB) recorded for a model, if any: of the math mode
    (`enhancer export`, emulated), or with `graph_rewrite` of the graph rewrite (measured)."""
    try:
        record = json.loads((Path(model_dir) / "metadata.json").read_text())[METADATA_KEY]
        return float((record[REWRITE_METADATA_KEY] if graph_rewrite else record)["psnr_change_db"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resolve(
    setting: str,
    cpuinfo: str,
    model_changes: Mapping[str, float | None] | None = None,
    *,
    onednn: bool = True,
    rewrite_changes: Mapping[str, float | None] | None = None,
) -> Precision:
    """The CPU precision for `setting` on a CPU described by `cpuinfo`, serving models whose
    recorded bfloat16 PSNR changes are `model_changes` (name -> dB, None: not measured), and those
    of the graph rewrite `rewrite_changes` (the same keys). Pure.

    `onednn` is False when TensorFlow's oneDNN kernels are switched off (TF_ENABLE_ONEDNN_OPTS=0),
    which takes the BF16 math mode with them.
    """
    if setting not in SETTINGS:
        raise PrecisionError(f"precision must be one of {', '.join(SETTINGS)}; got {setting!r}")
    if setting in ("float32", "mixed_float16"):
        return Precision(setting, setting, "set")
    flags = cpu_bfloat16_flags(cpuinfo)
    missing = None
    if not flags:
        missing = f"this CPU has no bfloat16 instructions, neither {' nor '.join(BFLOAT16_CPU_FLAGS)}"
    elif not onednn:
        missing = "oneDNN is switched off (TF_ENABLE_ONEDNN_OPTS=0), and with it the BF16 math mode"
    if setting == "bfloat16":
        if missing:
            raise PrecisionError(
                f"ENHANCER_PRECISION=bfloat16, but {missing}; use auto (bfloat16 where the CPU has it) or float32"
            )
        if takes_graph_rewrite(flags):
            return Precision(
                setting, "bfloat16",
                f"set; CPU has {', '.join(flags)} and no AMX: TensorFlow's bfloat16 graph rewrite of the "
                "convolutions, float32 in and out",
                graph_rewrite=True,
            )  # fmt: skip
        return Precision(setting, "bfloat16", f"set; CPU has {', '.join(flags)}")
    if missing:
        return Precision(setting, "float32", f"auto: {missing}")
    rewrite = _auto_graph_rewrite(rewrite_changes or {}, flags)
    if rewrite is not None or takes_graph_rewrite(flags):
        return rewrite or Precision(setting, "float32", f"auto: {NO_AMX_REASON}")
    over = {
        name: change
        for name, change in (model_changes or {}).items()
        if change is not None and abs(change) > MAX_BFLOAT16_PSNR_CHANGE_DB
    }
    if over:
        listed = ", ".join(f"{name} {change:+.4f} dB" for name, change in sorted(over.items()))
        return Precision(
            setting,
            "float32",
            f"auto: refused bfloat16, recorded PSNR change over {MAX_BFLOAT16_PSNR_CHANGE_DB} dB: {listed}",
        )
    return Precision(setting, "bfloat16", f"auto: CPU has {', '.join(flags)}; oneDNN BF16 math, float32 in and out")


def _auto_graph_rewrite(changes: Mapping[str, float | None], flags: list[str]) -> Precision | None:
    """`auto`'s graph rewrite for the models measured within the limit, or None where there is none."""
    allowed = sorted(n for n, c in changes.items() if c is not None and abs(c) <= MAX_BFLOAT16_PSNR_CHANGE_DB)
    if not allowed:
        return None
    kept = frozenset(changes) - set(allowed)
    reason = (
        f"auto: CPU has {', '.join(flags)}: TensorFlow's bfloat16 graph rewrite of the convolutions "
        f"for {', '.join(allowed)}, float32 in and out"
    )
    if kept:
        reason += f"; float32 for {', '.join(sorted(kept))} (no recorded graph-rewrite change within {MAX_BFLOAT16_PSNR_CHANGE_DB} dB)"
    return Precision("auto", "bfloat16", reason, graph_rewrite=True, float32_models=kept)


def _onednn_enabled(environ: Mapping[str, str]) -> bool:
    return environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in ("0", "false", "no", "off")


def prepare(setting: str, model_dirs: Iterable[Path] = (), *, cpuinfo: str | None = None) -> Precision:
    """Resolve the precision and set `ONEDNN_DEFAULT_FPMATH_MODE` to match; call before TensorFlow loads.

    BF16 math sets the variable to `BF16`; any other choice removes a value that would change
    float32 math (an operator's `BF16` left from older instructions), with a warning, because the
    setting decides. Once TensorFlow is loaded the variable can no longer be trusted to take effect:
    then bfloat16 is only reported if it was set already (an earlier call in this process), `auto`
    falls back to float32, and an explicit `bfloat16` is an error.
    """
    model_dirs = list(model_dirs)
    changes = {Path(d).name: recorded_change(d) for d in model_dirs}
    rewrite_changes = {Path(d).name: recorded_change(d, graph_rewrite=True) for d in model_dirs}
    cpuinfo = read_cpuinfo() if cpuinfo is None else cpuinfo
    plan = resolve(setting, cpuinfo, changes, onednn=_onednn_enabled(os.environ), rewrite_changes=rewrite_changes)
    current = os.environ.get(FPMATH_VARIABLE, "").strip().upper()
    if plan.graph_rewrite:  # the rewrite happens when a model's graph is first run, after this
        os.environ.setdefault(REWRITE_ALLOWLIST_REMOVE_VARIABLE, REWRITE_KEEPS_FLOAT32)
    if "tensorflow" in sys.modules:
        if plan.name == "bfloat16" and not plan.graph_rewrite and current != "BF16":
            if setting == "bfloat16":
                raise PrecisionError(
                    "ENHANCER_PRECISION=bfloat16 must be resolved before TensorFlow is imported "
                    f"({FPMATH_VARIABLE} is read when TensorFlow first runs); start the server through "
                    "`enhancer serve`, `uvicorn --factory enhancer.api:factory` or ModelRegistry.load, "
                    "without importing TensorFlow first"
                )
            plan = Precision(setting, "float32", "auto: TensorFlow was loaded before the precision could be set")
        elif plan.name != "bfloat16" and current not in ("", "STRICT"):
            raise PrecisionError(
                f"precision {plan.name} ({plan.reason}), but this process already runs with "
                f"{FPMATH_VARIABLE}={current}, fixed when TensorFlow loaded; run this model in its own process"
            )
        return plan
    if plan.name == "bfloat16" and not plan.graph_rewrite:
        os.environ[FPMATH_VARIABLE] = "BF16"
    elif current not in ("", "STRICT"):
        _log_once(
            logging.WARNING,
            f"{FPMATH_VARIABLE}={current} removed from the environment: ENHANCER_PRECISION resolved to "
            f"{plan.describe()}",
        )
        del os.environ[FPMATH_VARIABLE]
    if plan.name == "bfloat16" and setting == "auto" and not plan.graph_rewrite:
        unmeasured = sorted(name for name, change in changes.items() if change is None)
        if unmeasured:
            _log_once(
                logging.INFO,
                f"bfloat16 allowed for {', '.join(unmeasured)}: no bfloat16 PSNR change recorded in "
                "metadata.json (`enhancer measure-bfloat16` records one)",
            )
    if plan.graph_rewrite and setting == "bfloat16":
        _log_once(
            logging.WARNING,
            "ENHANCER_PRECISION=bfloat16 on a CPU without AMX (amx_bf16): the convolutions run in bfloat16 "
            "through TensorFlow's graph rewrite for every model, also one whose recorded change is over "
            "0.05 dB (auto would rewrite only the models recorded within it; benchmarks/RESULTS.md)",
        )
    if plan.name == "float32" and "refused bfloat16" in plan.reason:
        _log_once(logging.WARNING, f"precision {plan.describe()}")
    return plan
