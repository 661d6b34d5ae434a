"""ENHANCER_PRECISION: how `auto` resolves, that explicit settings win, that bfloat16's environment
variable is in place before TensorFlow loads on every way of starting, and what bfloat16 does to
the answers.

The development machines (AMD EPYC, one with avx2 only, one with avx512_bf16 and no AMX) do not
run oneDNN's BF16 math mode (float32 kernels without AMX), so the resolution is tested with
/proc/cpuinfo flags fixtures, and the math mode's answers with the emulation `enhancer export`
records (enhancer.training.bfloat16); the test that needs it for real is skipped without AMX. On
avx512_bf16 without AMX bfloat16 is TensorFlow's graph rewrite, tested for real where it exists.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import MODEL_DIR, REPO_ROOT
from pydantic import ValidationError

from enhancer import precision
from enhancer.config import Settings
from enhancer.precision import FPMATH_VARIABLE, MAX_BFLOAT16_PSNR_CHANGE_DB, PrecisionError, cpu_bfloat16_flags, resolve

#: The flags line of the development machine (`lscpu`, AMD EPYC): avx2, no bfloat16.
EPYC_AVX2 = (
    "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr "
    "sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology "
    "nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic "
    "movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy "
    "abm sse4a misalignsse 3dnowprefetch osvw topoext ssbd ibrs ibpb stibp vmmcall fsgsbase tsc_adjust "
    "bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 "
    "xsaves clzero xsaveerptr wbnoinvd arat umip pku ospke vaes vpclmulqdq rdpid fsrm\n"
)
#: A Sapphire Rapids Xeon's bfloat16-relevant flags (two CPUs, as /proc/cpuinfo lists each).
XEON_AMX = "".join(
    f"processor\t: {i}\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    "flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n\n"
    for i in range(2)
)
#: An EPYC with AVX-512 BF16 and no AMX (Zen 4), in lscpu's form.
EPYC_ZEN4 = "Flags: fpu avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni"


# --------------------------------------------------------------------------- the pure resolution
def test_auto_on_a_cpu_without_bfloat16_is_float32():
    assert cpu_bfloat16_flags(EPYC_AVX2) == []
    chosen = resolve("auto", EPYC_AVX2)
    assert chosen.name == "float32"
    assert chosen.describe() == "float32 (auto: this CPU has no bfloat16 instructions, neither avx512_bf16 nor amx_bf16)"


def test_auto_with_amx_picks_bfloat16():
    assert cpu_bfloat16_flags(XEON_AMX) == ["avx512_bf16", "amx_bf16"]
    chosen = resolve("auto", XEON_AMX)
    assert chosen.name == "bfloat16"
    assert chosen.reason.startswith("auto: CPU has avx512_bf16, amx_bf16")


def test_auto_with_avx512_bf16_but_no_amx_stays_float32_and_says_why():
    """On such a CPU (AMD EPYC, Zen 4) oneDNN ran float32 kernels in BF16 math mode: claiming
    bfloat16 there would be false (benchmarks/drivers/precision.py measured it)."""
    assert cpu_bfloat16_flags(EPYC_ZEN4) == ["avx512_bf16"]
    chosen = resolve("auto", EPYC_ZEN4)
    assert chosen.name == "float32"
    assert chosen.reason.startswith("auto: this CPU has avx512_bf16 but no AMX")


def test_explicit_bfloat16_on_avx512_bf16_without_amx_is_the_graph_rewrite():
    chosen = resolve("bfloat16", EPYC_ZEN4)
    assert chosen.name == "bfloat16" and chosen.graph_rewrite
    assert chosen.describe() == (
        "bfloat16 (set; CPU has avx512_bf16 and no AMX: TensorFlow's bfloat16 graph rewrite of the "
        "convolutions, float32 in and out)"
    )
    assert not resolve("bfloat16", XEON_AMX).graph_rewrite  # AMX: oneDNN's BF16 math mode


def test_auto_on_avx512_bf16_rewrites_only_the_models_measured_within_the_limit():
    """Per model: a graph-rewrite change recorded within 0.05 dB gets bfloat16; one over it, or one
    never measured (the emulation is of the math mode, not the rewrite), stays float32."""
    chosen = resolve("auto", EPYC_ZEN4, rewrite_changes={"restorer": -0.021, "x2": -0.096, "x4": 0.017, "new": None})
    assert chosen.name == "bfloat16" and chosen.graph_rewrite
    assert chosen.float32_models == {"x2", "new"}
    assert chosen.reason.startswith("auto: CPU has avx512_bf16: TensorFlow's bfloat16 graph rewrite")
    assert "for restorer, x4" in chosen.reason and "float32 for new, x2" in chosen.reason
    assert chosen.for_model("restorer") == chosen.describe()
    assert chosen.for_model("x2").startswith("float32 (auto: x2 records no bfloat16 graph-rewrite PSNR change within 0.05 dB")
    nobody = resolve("auto", EPYC_ZEN4, rewrite_changes={"x2": -0.096, "new": None})
    assert nobody.name == "float32" and not nobody.graph_rewrite
    assert resolve("auto", XEON_AMX, rewrite_changes={"x2": -0.5}).graph_rewrite is False  # AMX: the math mode


def test_auto_on_amx_rewrites_the_models_measured_within_the_limit():
    """With AMX too the rewrite is auto's first choice (measured faster there than the math mode:
    benchmarks/RESULTS.md); the math mode is left for servers where no model may take the rewrite."""
    chosen = resolve("auto", XEON_AMX, {"restorer": -0.001, "x2": 0.0004},
                     rewrite_changes={"restorer": -0.021, "x2": -0.074})  # fmt: skip
    assert chosen.name == "bfloat16" and chosen.graph_rewrite and chosen.float32_models == {"x2"}
    assert chosen.reason.startswith("auto: CPU has avx512_bf16, amx_bf16: TensorFlow's bfloat16 graph rewrite of the convolutions for restorer")
    math_mode = resolve("auto", XEON_AMX, {"x2": 0.0004}, rewrite_changes={"x2": -0.074})
    assert math_mode.name == "bfloat16" and not math_mode.graph_rewrite
    assert not resolve("bfloat16", XEON_AMX, rewrite_changes={"restorer": -0.021}).graph_rewrite  # set: every model, math mode


def test_the_shipped_models_record_their_graph_rewrite_change():
    records = {name: precision.recorded_change(REPO_ROOT / "weights" / name, graph_rewrite=True)
               for name in ("dejpeg-q", "upscale-x2", "upscale-x4")}  # fmt: skip
    assert all(change is not None for change in records.values())
    plan = resolve("auto", EPYC_ZEN4, rewrite_changes=records)
    assert plan.graph_rewrite and plan.float32_models == {n for n, c in records.items() if abs(c) > MAX_BFLOAT16_PSNR_CHANGE_DB}


def test_a_flag_counts_only_when_every_cpu_has_it_and_only_as_a_whole_word():
    mixed = XEON_AMX + "processor\t: 2\nflags\t\t: fpu avx2 avx512f\n"
    assert cpu_bfloat16_flags(mixed) == []
    assert cpu_bfloat16_flags("flags : avx512_bf16x amx_bf16_lookalike") == []
    assert cpu_bfloat16_flags("") == []


@pytest.mark.parametrize("cpuinfo", [EPYC_AVX2, XEON_AMX])
def test_explicit_float32_and_mixed_float16_win_over_the_cpu(cpuinfo):
    assert resolve("float32", cpuinfo, {"dejpeg": None}).describe() == "float32 (set)"
    assert resolve("mixed_float16", cpuinfo).describe() == "mixed_float16 (set)"


def test_explicit_bfloat16_wins_over_a_models_record():
    over = {"dejpeg": -(MAX_BFLOAT16_PSNR_CHANGE_DB + 0.03)}
    assert resolve("auto", XEON_AMX, over).name == "float32"
    assert resolve("bfloat16", XEON_AMX, over).describe() == "bfloat16 (set; CPU has avx512_bf16, amx_bf16)"


def test_explicit_bfloat16_on_a_cpu_without_it_is_an_error_that_says_what_to_do():
    with pytest.raises(PrecisionError, match=r"ENHANCER_PRECISION=bfloat16, but this CPU has no bfloat16.*use auto"):
        resolve("bfloat16", EPYC_AVX2)


def test_onednn_switched_off_means_no_bfloat16():
    assert resolve("auto", XEON_AMX, onednn=False).describe().startswith("float32 (auto: oneDNN is switched off")
    with pytest.raises(PrecisionError, match="TF_ENABLE_ONEDNN_OPTS=0"):
        resolve("bfloat16", XEON_AMX, onednn=False)


@pytest.mark.parametrize("change", [0.0501, -0.0501, -0.3])
def test_auto_refuses_bfloat16_for_a_model_whose_record_is_over_the_limit(change):
    chosen = resolve("auto", XEON_AMX, {"dejpeg": -0.002, "dejpeg-q": change, "new": None})
    assert chosen.name == "float32"  # the math mode is process-wide: one model keeps all in float32
    assert f"dejpeg-q {change:+.4f} dB" in chosen.reason and "dejpeg " not in chosen.reason


@pytest.mark.parametrize("change", [None, 0.0, -0.05, 0.049])
def test_auto_allows_bfloat16_for_a_model_within_the_limit_or_unmeasured(change):
    assert resolve("auto", XEON_AMX, {"dejpeg": change}).name == "bfloat16"


def test_unknown_setting_is_refused():
    with pytest.raises(PrecisionError, match="precision must be one of auto, float32, bfloat16, mixed_float16"):
        resolve("float16", XEON_AMX)


def test_the_setting_defaults_to_auto_and_takes_the_four_values(monkeypatch):
    monkeypatch.delenv("ENHANCER_PRECISION", raising=False)
    assert Settings(_env_file=None).precision == "auto"
    for value in ("auto", "float32", "bfloat16", "mixed_float16"):
        monkeypatch.setenv("ENHANCER_PRECISION", value)
        assert Settings(_env_file=None).precision == value
    monkeypatch.setenv("ENHANCER_PRECISION", "bf16")
    with pytest.raises(ValidationError, match="precision"):
        Settings(_env_file=None)


# ------------------------------------------------------------- prepare: metadata and environment
def _model_copy(tmp_path: Path, name: str, change: float | None) -> Path:
    """The committed model under another name, with `change` as its recorded bfloat16 PSNR change."""
    folder = tmp_path / name
    shutil.copytree(MODEL_DIR, folder, ignore=shutil.ignore_patterns("eval", "MODEL_CARD.md"))
    meta = json.loads((folder / "metadata.json").read_text())
    meta.pop("bfloat16", None)
    if change is not None:
        meta["bfloat16"] = {"psnr_change_db": change, "method": "test fixture"}
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def before_tensorflow(monkeypatch):
    """This process as if TensorFlow were not loaded yet (prepare's normal case), environment restored after."""
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.setenv(FPMATH_VARIABLE, "")  # recorded, so a value prepare sets is undone after the test
    monkeypatch.delenv(FPMATH_VARIABLE)
    monkeypatch.setattr(precision, "_logged", set())


@pytest.fixture(autouse=True)
def _no_bf16_math_left_behind():
    """The variable must not leak into the rest of the suite, which expects float32 answers."""
    before = os.environ.get(FPMATH_VARIABLE)
    yield
    assert os.environ.get(FPMATH_VARIABLE) == before


def test_the_committed_model_records_its_bfloat16_change_within_the_limit():
    meta = json.loads((MODEL_DIR / "metadata.json").read_text())
    record = meta["bfloat16"]
    assert record["method"].startswith("emulated")
    assert abs(record["psnr_change_db"]) <= MAX_BFLOAT16_PSNR_CHANGE_DB
    assert precision.recorded_change(MODEL_DIR) == record["psnr_change_db"]


def test_prepare_sets_bf16_math_for_auto_on_a_bfloat16_cpu(tmp_path, before_tensorflow, caplog):
    unmeasured = _model_copy(tmp_path, "unmeasured", None)
    with caplog.at_level(logging.INFO, logger="enhancer.precision"):
        chosen = precision.prepare("auto", [unmeasured], cpuinfo=XEON_AMX)
    assert chosen.name == "bfloat16"
    assert os.environ[FPMATH_VARIABLE] == "BF16"
    assert "bfloat16 allowed for unmeasured: no bfloat16 PSNR change recorded" in caplog.text


def test_prepare_warns_when_bfloat16_is_set_on_a_cpu_without_amx(before_tensorflow, monkeypatch, caplog):
    """There the graph rewrite runs, not the math mode, and the projection's matrix products are
    kept off its list: the math-mode variable is left unset."""
    monkeypatch.delenv(precision.REWRITE_ALLOWLIST_REMOVE_VARIABLE, raising=False)
    with caplog.at_level(logging.INFO, logger="enhancer.precision"):
        chosen = precision.prepare("bfloat16", cpuinfo=EPYC_ZEN4)
    assert chosen.name == "bfloat16" and chosen.graph_rewrite and FPMATH_VARIABLE not in os.environ
    assert os.environ[precision.REWRITE_ALLOWLIST_REMOVE_VARIABLE] == precision.REWRITE_KEEPS_FLOAT32
    assert "ENHANCER_PRECISION=bfloat16 on a CPU without AMX (amx_bf16): the convolutions run in bfloat16" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="enhancer.precision"):
        precision.prepare("bfloat16", cpuinfo=XEON_AMX)
    assert "without AMX" not in caplog.text


def test_prepare_refuses_a_model_recorded_over_the_limit_and_logs_why(tmp_path, before_tensorflow, caplog):
    folders = [_model_copy(tmp_path, "fine", -0.002), _model_copy(tmp_path, "touchy", -0.08)]
    with caplog.at_level(logging.INFO, logger="enhancer.precision"):
        chosen = precision.prepare("auto", folders, cpuinfo=XEON_AMX)
    assert chosen.describe() == "float32 (auto: refused bfloat16, recorded PSNR change over 0.05 dB: touchy -0.0800 dB)"
    assert FPMATH_VARIABLE not in os.environ
    assert "refused bfloat16" in caplog.text and "touchy -0.0800 dB" in caplog.text


def test_prepare_removes_an_operators_bf16_variable_when_float32_is_chosen(before_tensorflow, monkeypatch, caplog):
    monkeypatch.setenv(FPMATH_VARIABLE, "BF16")
    with caplog.at_level(logging.WARNING, logger="enhancer.precision"):
        chosen = precision.prepare("float32", cpuinfo=XEON_AMX)
    assert chosen.name == "float32" and FPMATH_VARIABLE not in os.environ
    assert f"{FPMATH_VARIABLE}=BF16 removed" in caplog.text


def test_once_tensorflow_is_loaded_bfloat16_cannot_be_promised(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", sys.modules.get("tensorflow", object()))
    monkeypatch.setenv(FPMATH_VARIABLE, "")
    monkeypatch.delenv(FPMATH_VARIABLE)
    late = precision.prepare("auto", cpuinfo=XEON_AMX)
    assert late.describe() == "float32 (auto: TensorFlow was loaded before the precision could be set)"
    assert FPMATH_VARIABLE not in os.environ
    with pytest.raises(PrecisionError, match="before TensorFlow is imported"):
        precision.prepare("bfloat16", cpuinfo=XEON_AMX)
    monkeypatch.setenv(FPMATH_VARIABLE, "BF16")  # set before TensorFlow loaded: it holds
    assert precision.prepare("auto", cpuinfo=XEON_AMX).name == "bfloat16"


# ----------------------------------------------- the real start-up paths, each in a fresh process
#: Runs in a fresh interpreter: fakes /proc/cpuinfo, records the variable at the moment TensorFlow's
#: import starts and at every resolution, then starts the server or the command for real.
PROBE = textwrap.dedent(
    """
    import importlib.abc, json, os, signal, sys, threading, time, urllib.request
    cpuinfo, entry, port, report = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    seen = {"resolutions": []}

    class Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" and "at_tensorflow_import" not in seen:
                seen["at_tensorflow_import"] = os.environ.get("ONEDNN_DEFAULT_FPMATH_MODE")
            return None

    sys.meta_path.insert(0, Watch())
    from enhancer import precision
    precision.read_cpuinfo = lambda: cpuinfo
    real_prepare = precision.prepare

    def prepare(*args, **kwargs):
        loaded = "tensorflow" in sys.modules
        chosen = real_prepare(*args, **kwargs)
        seen["resolutions"].append({"tensorflow_loaded": loaded, "variable": os.environ.get("ONEDNN_DEFAULT_FPMATH_MODE"),
                                    "precision": chosen.describe()})
        return chosen

    precision.prepare = prepare

    def save():
        seen["tensorflow_loaded_at_exit"] = "tensorflow" in sys.modules
        with open(report, "w") as f:
            json.dump(seen, f)

    def stop_when_ready():  # uvicorn re-raises SIGTERM after its shutdown, so save first
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                    seen["readyz"] = json.load(answer)
                break
            except OSError:
                time.sleep(0.3)
        save()
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        if entry == "serve":
            threading.Thread(target=stop_when_ready, daemon=True).start()
            from enhancer.cli import main
            sys.exit(main(["serve", "--port", str(port)]))
        elif entry == "uvicorn":
            threading.Thread(target=stop_when_ready, daemon=True).start()
            import uvicorn
            sys.argv = ["uvicorn", "--factory", "enhancer.api:factory", "--port", str(port), "--log-level", "warning"]
            uvicorn.main()
        else:
            from enhancer.cli import main
            sys.exit(main(["enhance", sys.argv[5], sys.argv[6], "-q"]))
    finally:
        if "readyz" not in seen:
            save()
    """
)


#: A clean end: 0, or the SIGTERM the probe sent, which uvicorn re-raises once it has shut down.
_CLEAN_EXIT = (0, -signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path: Path, entry: str, cpuinfo: str, model_dir: Path = MODEL_DIR, **settings) -> tuple[dict, subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENHANCER_", "OPENCV_", "ONEDNN_", "TF_ENABLE_ONEDNN"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")]),
        ENHANCER_MODEL_DIR=str(model_dir),
        ENHANCER_UPSCALE_MODEL_DIRS="none",  # only the model named above, also once weights/upscale-x* exist
        ENHANCER_TILE_SIZE="128",
        ENHANCER_LOG_LEVEL="info",
        **{f"ENHANCER_{k.upper()}": str(v) for k, v in settings.items()},
    )
    report = tmp_path / f"{entry}.json"
    files = [str(REPO_ROOT / "tests" / "data" / "held_out_photo.png"), str(tmp_path / "out.png")]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, cpuinfo, entry, str(_free_port()), str(report), *files],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert report.exists(), f"no report; rc {result.returncode}\n{result.stderr[-3000:]}"
    return json.loads(report.read_text()), result


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["serve", "uvicorn", "enhance"])
def test_bf16_math_is_in_the_environment_before_tensorflow_loads(tmp_path, entry):
    """`enhancer serve`, `uvicorn --factory enhancer.api:factory` and `enhancer enhance`, on a CPU
    whose flags say bfloat16: the variable is BF16 when TensorFlow's import starts. (This CPU
    cannot do bfloat16 math, so oneDNN runs float32 anyway; what is checked is the order.)"""
    seen, result = _start(tmp_path, entry, XEON_AMX)  # weights/dejpeg records no graph-rewrite change
    assert result.returncode in _CLEAN_EXIT, result.stderr[-3000:]
    first = seen["resolutions"][0]
    assert first["tensorflow_loaded"] is False and first["variable"] == "BF16"
    assert seen["at_tensorflow_import"] == "BF16"
    assert seen["tensorflow_loaded_at_exit"] is True  # the model did load: the order was really tested
    assert all(r["precision"].startswith("bfloat16 (auto: CPU has avx512_bf16, amx_bf16") for r in seen["resolutions"])
    if entry == "enhance":
        assert result.returncode == 0 and (tmp_path / "out.png").stat().st_size > 0
    else:
        assert seen["readyz"]["precision"].startswith("bfloat16 (auto: CPU has avx512_bf16, amx_bf16")
        if entry == "serve":  # the start-up line (under plain uvicorn enhancer's info lines have no handler)
            assert "precision bfloat16 (auto: CPU has avx512_bf16" in result.stderr


@pytest.mark.slow
def test_auto_on_amx_serves_the_shipped_restorer_through_the_graph_rewrite(tmp_path):
    """The shipped restorer records a rewrite change within the limit: on an AMX CPU auto rewrites
    it (no BF16 math mode in the environment) and /readyz says so."""
    seen, result = _start(tmp_path, "serve", XEON_AMX, model_dir=REPO_ROOT / "weights" / "dejpeg-q")
    assert result.returncode in _CLEAN_EXIT, result.stderr[-3000:]
    assert seen["at_tensorflow_import"] is None
    assert seen["readyz"]["precision"].startswith(
        "bfloat16 (auto: CPU has avx512_bf16, amx_bf16: TensorFlow's bfloat16 graph rewrite of the convolutions for dejpeg-q"
    )


@pytest.mark.slow
def test_auto_serves_float32_on_a_cpu_without_bfloat16(tmp_path):
    seen, result = _start(tmp_path, "serve", EPYC_AVX2)
    assert result.returncode in _CLEAN_EXIT, result.stderr[-3000:]
    assert seen["at_tensorflow_import"] is None
    assert seen["readyz"]["precision"] == "float32 (auto: this CPU has no bfloat16 instructions, neither avx512_bf16 nor amx_bf16)"
    assert "precision float32 (auto: this CPU has no bfloat16 instructions" in result.stderr


@pytest.mark.slow
def test_auto_serves_float32_when_a_model_records_too_large_a_change(tmp_path):
    model = _model_copy(tmp_path, "touchy", 0.08)
    seen, result = _start(tmp_path, "serve", XEON_AMX, model_dir=model)
    assert result.returncode in _CLEAN_EXIT, result.stderr[-3000:]
    assert seen["at_tensorflow_import"] is None
    assert seen["readyz"]["precision"] == "float32 (auto: refused bfloat16, recorded PSNR change over 0.05 dB: touchy +0.0800 dB)"
    assert "WARNING enhancer.precision: precision float32 (auto: refused bfloat16" in result.stderr


def test_explicit_bfloat16_on_a_cpu_without_it_stops_serve_before_tensorflow_loads(tmp_path):
    seen, result = _start(tmp_path, "serve", EPYC_AVX2, precision="bfloat16")
    assert result.returncode == 1
    assert "enhancer: ENHANCER_PRECISION=bfloat16, but this CPU has no bfloat16 instructions" in result.stderr
    assert seen["tensorflow_loaded_at_exit"] is False and "readyz" not in seen


# ------------------------------------------------------------------- what bfloat16 does to answers
tf = pytest.importorskip("tensorflow")


def _held_out_pair(quality: int) -> tuple[np.ndarray, np.ndarray]:
    """The committed crop (RGB in [0, 1]) and its JPEG at `quality`."""
    import cv2

    clean_bgr = cv2.imread(str(REPO_ROOT / "tests" / "data" / "held_out_photo.png"), cv2.IMREAD_COLOR)
    ok, data = cv2.imencode(".jpg", clean_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    damaged_bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return tuple(np.ascontiguousarray(im[..., ::-1], np.float32) / 255.0 for im in (clean_bgr, damaged_bgr))


@pytest.fixture(scope="module")
def shipped_pair():
    from enhancer.training.bfloat16 import SignaturePair

    return SignaturePair(MODEL_DIR)


@pytest.mark.parametrize("quality", [10, 90])
def test_bfloat16_answers_stay_within_0_05_db_of_float32(shipped_pair, quality):
    """On the committed crop at q10 and q90. This CPU has no bfloat16 instructions, so bfloat16 is the
    emulation (every convolution's inputs and weights rounded to bfloat16, float32 accumulation);
    `test_real_bfloat16_matches_the_emulation` checks the emulation against the hardware where it exists."""
    from enhancer.training.dataset import psnr

    clean, damaged = _held_out_pair(quality)
    f32 = shipped_pair.float32(damaged[None])[0]
    bf16 = shipped_pair.bfloat16(damaged[None])[0]
    assert shipped_pair.rounded_ops == 11  # every convolution of dejpeg
    assert np.abs(bf16 - f32).max() > 1e-5  # the emulation changes the answer: the comparison means something
    assert psnr(f32, clean) > psnr(damaged, clean) or quality == 90  # the model really ran
    assert abs(psnr(bf16, clean) - psnr(f32, clean)) <= MAX_BFLOAT16_PSNR_CHANGE_DB


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 rounded to the nearest bfloat16 (ties to even), in numpy: the reference."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def test_the_emulation_rounds_convolution_and_matmul_inputs_and_accumulates_in_float32():
    from enhancer.training.bfloat16 import round_math_inputs

    rng = np.random.default_rng(5)
    x = rng.normal(size=(1, 4, 4, 8)).astype(np.float32)
    kernel = rng.normal(size=(1, 1, 8, 6)).astype(np.float32)
    dense = rng.normal(size=(6, 5)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, 4, 4, 8], tf.float32, name="x")])
    def net(inputs):
        y = tf.nn.conv2d(inputs, tf.constant(kernel), 1, "SAME")
        return tf.identity(tf.matmul(tf.reshape(y, [16, 6]), tf.constant(dense)) + 1.0, name="out")

    graph, changed = round_math_inputs(net.get_concrete_function().graph.as_graph_def())
    assert changed == 2
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph, name=""), [])
    emulated = wrapped.prune(feeds=[wrapped.graph.as_graph_element("x:0")], fetches=[wrapped.graph.as_graph_element("out:0")])
    got = emulated(tf.constant(x))[0].numpy()

    conv = _bf16(x).reshape(16, 8) @ _bf16(kernel[0, 0])  # float32 sums of exact products
    expected = _bf16(conv) @ _bf16(dense) + np.float32(1.0)
    plain = x.reshape(16, 8).astype(np.float64) @ kernel[0, 0] @ dense + 1.0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.abs(got - plain).max() > 1e-3  # and it is not float32


def test_real_bfloat16_matches_the_emulation(tmp_path):
    """Where the CPU has bfloat16 instructions: the shipped model with ENHANCER_PRECISION=bfloat16 in
    a fresh process agrees with the emulation far more closely than either with float32's 0.05 dB."""
    if "amx_bf16" not in cpu_bfloat16_flags(precision.read_cpuinfo()):
        pytest.skip("this CPU has no AMX (amx_bf16): oneDNN runs float32 kernels here even in BF16 math mode")
    from enhancer.training.bfloat16 import SignaturePair
    from enhancer.training.dataset import psnr

    clean, damaged = _held_out_pair(10)
    np.save(tmp_path / "in.npy", damaged[None])
    code = (
        "import sys, numpy as np; from enhancer.config import Settings; from enhancer.models.registry import ModelRegistry;"
        "m = ModelRegistry.load(Settings(_env_file=None, model_dir=sys.argv[1], precision='bfloat16'));"
        "assert m.precision.startswith('bfloat16'), m.precision;"
        "np.save(sys.argv[3], m.select(None).forward(np.load(sys.argv[2])))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop(FPMATH_VARIABLE, None)
    subprocess.run([sys.executable, "-c", code, str(MODEL_DIR), str(tmp_path / "in.npy"), str(tmp_path / "out.npy")],
                   env=env, check=True, timeout=300)  # fmt: skip
    real = np.load(tmp_path / "out.npy")[0]
    pair = SignaturePair(MODEL_DIR)
    f32, emulated = pair.float32(damaged[None])[0], pair.bfloat16(damaged[None])[0]
    assert np.abs(real - f32).max() > 0  # bfloat16 really ran
    assert abs(psnr(real, clean) - psnr(f32, clean)) <= MAX_BFLOAT16_PSNR_CHANGE_DB
    assert psnr(real, emulated) > psnr(real, f32) - 3.0  # the emulation is as close to the hardware as float32 is, or closer


def _served_restorer_answer(tmp_path: Path, setting: str, jpeg: bytes) -> tuple[np.ndarray, str]:
    """The served restorer's answer to `jpeg` through the server's own start-up path, in a fresh process."""
    (tmp_path / "in.jpg").write_bytes(jpeg)
    out = tmp_path / f"out_{setting}.npy"
    code = (
        "import sys, numpy as np; from enhancer import imaging; from enhancer.conditioning import model_inputs;"
        "from enhancer.config import Settings; from enhancer.models.registry import ModelRegistry;"
        "from enhancer.samples import to_unit_float;"
        "r = ModelRegistry.load(Settings(_env_file=None, precision=sys.argv[1], upscale_model_dirs='none'));"
        "m = r.select(None); image = imaging.decode(open(sys.argv[2], 'rb').read());"
        "inputs = {k: v[None] for k, v in model_inputs(m.spec, image.info).items()};"
        "np.save(sys.argv[3], m.forward(to_unit_float(image.pixels)[None], inputs)[0]); print(r.precision)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for variable in (FPMATH_VARIABLE, precision.REWRITE_ALLOWLIST_REMOVE_VARIABLE):
        env.pop(variable, None)
    done = subprocess.run([sys.executable, "-c", code, setting, str(tmp_path / "in.jpg"), str(out)],
                          env=env, check=True, timeout=300, capture_output=True, text=True, cwd=REPO_ROOT)  # fmt: skip
    return np.load(out), done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("quality", [10, 90])
def test_the_bfloat16_graph_rewrite_changes_the_answer_by_at_most_0_05_db(tmp_path, quality):
    """Where the CPU has bfloat16 instructions, the precision that means the rewrite there
    (ENHANCER_PRECISION=bfloat16 without AMX, auto with it) really runs it (the answer changes) and the
    served restorer stays within 0.05 dB of float32 on the committed crop."""
    flags = cpu_bfloat16_flags(precision.read_cpuinfo())
    if not flags:
        pytest.skip("the graph rewrite needs a CPU with bfloat16 instructions (avx512_bf16 or amx_bf16)")
    import cv2

    from enhancer.training.dataset import psnr

    clean_bgr = cv2.imread(str(REPO_ROOT / "tests" / "data" / "held_out_photo.png"), cv2.IMREAD_COLOR)
    jpeg = cv2.imencode(".jpg", clean_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
    clean = np.ascontiguousarray(clean_bgr[..., ::-1], np.float32) / 255.0
    f32, f32_precision = _served_restorer_answer(tmp_path, "float32", jpeg)
    b16, b16_precision = _served_restorer_answer(tmp_path, "bfloat16" if precision.takes_graph_rewrite(flags) else "auto", jpeg)
    assert f32_precision.startswith("float32") and "graph rewrite" in b16_precision
    assert np.abs(b16 - f32).max() > 1e-4  # the rewrite ran: bfloat16 activations change the answer
    assert abs(psnr(np.clip(b16, 0, 1), clean) - psnr(np.clip(f32, 0, 1), clean)) <= MAX_BFLOAT16_PSNR_CHANGE_DB


def test_one_process_rewrites_one_model_and_keeps_the_other_in_float32(tmp_path):
    """Where the CPU has bfloat16 instructions, under a plan that rewrites the restorer and keeps
    the 2x model in float32: calls alternate between them, at new shapes too, and each answer is
    what a process of its own precision gives (Grappler's switch is global, so the runner sets it
    before every call)."""
    flags = cpu_bfloat16_flags(precision.read_cpuinfo())
    if not flags:
        pytest.skip("the graph rewrite needs a CPU with bfloat16 instructions (avx512_bf16 or amx_bf16)")
    code = textwrap.dedent("""
        import sys, numpy as np
        from enhancer.config import Settings
        from enhancer.models.saved_model import SavedModelRunner, configure_device
        from enhancer.precision import prepare, resolve
        mode = sys.argv[1]
        if mode == "mixed":
            plan = resolve("auto", "flags: avx512_bf16", rewrite_changes={"dejpeg-q": 0.0, "upscale-x2": 1.0})
        else:
            plan = resolve(mode, "flags: avx512_bf16")
        prepare(plan.setting, cpuinfo="flags: avx512_bf16")
        device = configure_device(Settings(_env_file=None), plan)
        runners = [SavedModelRunner(f"weights/{n}", device=device) for n in ("dejpeg-q", "upscale-x2")]
        rng = np.random.default_rng(0)
        out = {}
        for shape in ((64, 96), (96, 64), (64, 96)):
            x = rng.uniform(0, 1, (1, *shape, 3)).astype(np.float32)
            for r in runners:
                q = {k: np.full((1, n), 2.0, np.float32) for k, n in r.spec.inputs.items()}
                out[f"{r.spec.name}_{shape}_{len(out)}"] = r.forward(x, q)
        np.savez(sys.argv[2], precisions=np.array([r.precision for r in runners]), **out)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for variable in (FPMATH_VARIABLE, precision.REWRITE_ALLOWLIST_REMOVE_VARIABLE):
        env.pop(variable, None)
    results = {}
    for mode in ("mixed", "float32", "bfloat16"):
        subprocess.run([sys.executable, "-c", code, mode, str(tmp_path / f"{mode}.npz")], env=env, check=True,
                       timeout=300, cwd=REPO_ROOT, capture_output=True)  # fmt: skip
        results[mode] = np.load(tmp_path / f"{mode}.npz")
    mixed = results["mixed"]
    assert "graph rewrite" in str(mixed["precisions"][0]) and str(mixed["precisions"][1]).startswith("float32 (auto: upscale-x2")
    for key in (k for k in mixed.files if k != "precisions"):
        own = "bfloat16" if key.startswith("dejpeg-q") else "float32"
        other = "float32" if own == "bfloat16" else "bfloat16"
        np.testing.assert_array_equal(mixed[key], results[own][key])
        assert np.abs(mixed[key] - results[other][key]).max() > 1e-4


def test_export_s_measurement_of_the_graph_rewrite_runs_it_for_real():
    """What `enhancer export` / `measure-bfloat16` record on a CPU with bfloat16 instructions: the
    rewrite run (answers changed) on the given photos, per kind, the restorer within the limit."""
    flags = cpu_bfloat16_flags(precision.read_cpuinfo())
    if not flags:
        pytest.skip("the graph rewrite needs a CPU with bfloat16 instructions (avx512_bf16 or amx_bf16)")
    import cv2

    from enhancer.training.bfloat16 import measure_rewrite_change

    photos = [cv2.imread(str(REPO_ROOT / "tests" / "data" / name), cv2.IMREAD_COLOR) for name in ("held_out_photo.png", "held_out_cups.png")]
    result = measure_rewrite_change(REPO_ROOT / "weights" / "dejpeg-q", photos)
    assert set(result["per_kind_db"]) == {"q10", "q90"}
    assert result["psnr_change_db"] == max(result["per_kind_db"].values(), key=abs)
    assert abs(result["psnr_change_db"]) <= MAX_BFLOAT16_PSNR_CHANGE_DB
    assert result["lowest_psnr_bfloat16_vs_float32_db"] is not None and result["lowest_psnr_bfloat16_vs_float32_db"] < 80  # it changed


# ----------------------------------------------------------------------- export records the change
@pytest.mark.slow
def test_export_records_the_bfloat16_change_in_metadata(tmp_path):
    from enhancer.cli import main
    from enhancer.training.network import build

    net = build("dejpeg")
    rng = np.random.default_rng(0)
    net.set_weights([w + rng.normal(0, 0.01, w.shape).astype(np.float32) for w in net.get_weights()])
    run = tmp_path / "run"
    run.mkdir()
    net.save_weights(str(run / "final.weights.h5"))
    (run / "config.json").write_text(json.dumps({"architecture": "dejpeg", "data_dir": str(tmp_path / "data")}))
    (tmp_path / "data" / "val").mkdir(parents=True)
    for name in ("held_out_photo.png", "held_out_cups.png"):
        shutil.copy(REPO_ROOT / "tests" / "data" / name, tmp_path / "data" / "val" / name)

    assert main(["export", "--run", str(run), "--weights", "final", "--out", str(tmp_path / "model")]) == 0
    record = json.loads((tmp_path / "model" / "metadata.json").read_text())["bfloat16"]
    assert record["method"].startswith("emulated: ") and "11 ops rounded" in record["method"]
    assert set(record["per_quality"]) == {"q10", "q90"}
    changes = [row["change_db"] for row in record["per_quality"].values()]
    assert record["psnr_change_db"] == max(changes, key=abs)
    for row in record["per_quality"].values():
        assert row["change_db"] == pytest.approx(row["bfloat16_psnr_db"] - row["float32_psnr_db"], abs=2e-5)
    assert record["images"].startswith("2 validation photos")
    assert precision.recorded_change(tmp_path / "model") == record["psnr_change_db"]


def test_export_without_validation_photos_records_nothing_and_says_so(tmp_path, caplog):
    from enhancer.training.commands import _validation_photos

    with caplog.at_level(logging.WARNING, logger="enhancer"):
        assert _validation_photos(tmp_path / "missing") == []
    assert "bfloat16 PSNR change is not measured" in caplog.text and "auto will allow bfloat16" in caplog.text
