"""The model-building subcommands of the `enhancer` CLI: fetch-photos, dataset, train, export, evaluate.

Heavy imports (TensorFlow, scikit-image) happen inside each command so `enhancer --help` stays fast.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import platform
import time
from pathlib import Path

from enhancer.training.train import LOSSES, TrainConfig

#: `enhancer train` defaults are the recipe's, so the plain command reproduces the shipped run.
TRAIN_DEFAULTS = TrainConfig()

DEFAULT_DATA = Path("data/photos")
DEFAULT_RUN = Path("runs/dejpeg")
DEFAULT_MODEL = Path("weights/dejpeg-q")
DEFAULT_TESTSET = Path("data/testset")


def machine_description() -> str:
    """CPU model and core count, recorded beside every speed figure."""
    import os

    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def _fetch_photos(args) -> None:
    from enhancer.training.sources import fetch_photos

    fetch_photos(args.out, puzzles=args.puzzles)


def _fetch_fonts(args) -> None:
    from enhancer.training.synthetic import fetch_fonts

    print(f"{len(fetch_fonts(args.out))} fonts in {args.out}")


def _fetch_scans(args) -> None:
    from enhancer.training.documents import fetch_scans

    print(f"{len(fetch_scans(args.out))} scanned pages in {args.out}")


def _fetch_textures(args) -> None:
    from enhancer.training.textures import fetch_textures

    print(f"{len(fetch_textures(args.out))} texture tiles in {args.out}")


def _testset(args) -> None:
    from enhancer.training.testset import build_testset

    kinds = build_testset(args.out)
    print(f"{len(kinds)} test images in {args.out}")


def _dataset(args) -> None:
    from enhancer.training.dataset import DEFAULT_VALIDATION, SplitOverlapError, prepare_photos

    validation = tuple(args.val.split(",")) if args.val else DEFAULT_VALIDATION
    testset = args.testset if args.testset is not None else (DEFAULT_TESTSET if DEFAULT_TESTSET.is_dir() else None)
    try:
        print(prepare_photos(args.source, args.out, validation, args.min_downscale, args.max_side, testset=testset))
    except SplitOverlapError as exc:
        raise SystemExit(f"enhancer dataset: {exc}") from None


def _train(args) -> None:
    from enhancer.training.train import TrainConfig, train

    cfg = TrainConfig(
        data_dir=str(args.data), run_dir=str(args.run), architecture=args.architecture, steps=args.steps,
        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, patch_size=args.patch_size,
        learning_rate=args.learning_rate, seed=args.seed, loss=args.loss, warmup_steps=args.warmup_steps,
        init_weights=str(args.init_weights) if args.init_weights else None, ema_decay=args.ema_decay,
        fonts_dir=str(args.fonts), relative_floor=args.relative_floor, mix=args.mix, scans_dir=str(args.scans),
        textures_dir=str(args.textures),
    )  # fmt: skip
    train(cfg, max_minutes=args.max_minutes, progress=not args.no_progress)


def _run_record(run_dir: Path) -> dict:
    """What a run directory says about its training: recipe, log, steps and minutes reached, the
    training and validation photos (names, content hashes and a fingerprint, from the run's
    data.json), and (for a fine-tune, nested) the run it started from, so the model card tells the
    whole recipe."""
    recipe = json.loads((run_dir / "config.json").read_text())
    log = (run_dir / "log.csv").read_text() if (run_dir / "log.csv").exists() else ""
    state_path = run_dir / "checkpoint" / "state.json"
    if state_path.exists():
        state = json.loads(state_path.read_text())
    else:  # a committed record whose checkpoint was deleted: its log's last epoch
        rows = list(csv.DictReader(io.StringIO(log)))
        state = {"step": int(rows[-1]["step"]), "elapsed_s": float(rows[-1]["elapsed_s"])} if rows else {}
    record = {
        "recipe": recipe,
        "log": log,
        "trained_steps": state.get("step"),
        "training_minutes": state.get("elapsed_s", 0) / 60,
    }
    data_path = run_dir / "data.json"
    if data_path.exists():  # runs before the photo lists were recorded have counts and a fingerprint only
        data = json.loads(data_path.read_text())
        record["data"] = {key: data[key] for key in ("train", "val", "scans", "train_images", "val_images", "data_fingerprint")
                          if key in data}  # fmt: skip
    init_weights = Path(recipe["init_weights"]) if recipe.get("init_weights") else None
    if init_weights is not None and (init_weights.parent / "config.json").exists():
        record["base_run"] = {**_run_record(init_weights.parent), "weights_file": init_weights.name}
    elif init_weights is not None:  # a served model's folder: name it and what it was
        meta = init_weights / "metadata.json"
        record["base_model"] = {"path": str(init_weights),
                                "architecture": json.loads(meta.read_text()).get("architecture") if meta.exists() else None}  # fmt: skip
    return record


def _export(args) -> None:
    import numpy as np

    from enhancer.training import model_card, network
    from enhancer.training.export import export_saved_model

    record = _run_record(args.run)
    model = network.build(record["recipe"]["architecture"])
    weights = args.run / f"{args.weights}.weights.h5" if args.weights in ("best", "final") else args.run / "checkpoint" / "model.weights.h5"
    model.load_weights(str(weights))
    if args.weights == "average":  # the latest checkpoint's weight average: what its validation row measured
        weights = args.run / "checkpoint" / "average.npz"
        with np.load(weights) as saved:
            for variable, i in zip(model.trainable_variables, range(len(saved.files)), strict=True):
                variable.assign(saved[f"arr_{i}"])
    metadata = {
        **record,
        "weights": args.weights,
        "training_machine": machine_description(),
        "macs_per_pixel": network.macs_per_pixel(model),
        "exported": time.strftime("%Y-%m-%d"),
    }
    photos = _validation_photos(Path(args.data) if args.data else Path(record["recipe"]["data_dir"]))
    measure = (lambda folder: {"bfloat16": _measure_bfloat16(folder, photos)}) if photos else None
    out = export_saved_model(model, args.out, metadata, measure=measure)  # adds the contract's keys (reach, scale, ...)
    model_card.write(out)
    print(f"exported {weights} -> {out}")


def _validation_photos(data_dir: Path) -> list:
    """The held-out photos (`<data>/val`) the bfloat16 change is measured on; [] with a warning
    when there are none, so the model is exported without the record (auto then allows bfloat16)."""
    from enhancer.training.dataset import load_images

    folder = data_dir / "val"
    photos = load_images(folder) if folder.is_dir() else []
    if not photos:
        logging.getLogger("enhancer").warning(
            "no validation photos in %s: the bfloat16 PSNR change is not measured, and "
            "ENHANCER_PRECISION=auto will allow bfloat16 for this model", folder
        )  # fmt: skip
    return photos


def _measure_bfloat16(model_dir: Path, photos: list) -> dict:
    """The math mode's change (emulated, anywhere) and, on a CPU with bfloat16 instructions
    (avx512_bf16 or AMX), the graph rewrite's (run for real: the bfloat16 `auto` prefers there)."""
    from enhancer.precision import (
        MAX_BFLOAT16_PSNR_CHANGE_DB,
        REWRITE_METADATA_KEY,
        cpu_bfloat16_flags,
        read_cpuinfo,
    )
    from enhancer.training.bfloat16 import measure_psnr_change, measure_rewrite_change

    def verdict(change: float) -> str:
        return f"{'over' if abs(change) > MAX_BFLOAT16_PSNR_CHANGE_DB else 'within'} the {MAX_BFLOAT16_PSNR_CHANGE_DB} dB auto allows"

    result = {**measure_psnr_change(model_dir, photos), "machine": machine_description()}
    per_quality = ", ".join(f"{q} {row['change_db']:+.5f}" for q, row in result["per_quality"].items())
    print(f"bfloat16 PSNR change {result['psnr_change_db']:+.5f} dB, emulated ({per_quality}; {verdict(result['psnr_change_db'])})")
    if cpu_bfloat16_flags(read_cpuinfo()):
        rewrite = {**measure_rewrite_change(model_dir, photos), "machine": machine_description()}
        result[REWRITE_METADATA_KEY] = rewrite
        per_kind = ", ".join(f"{k} {v:+.5f}" for k, v in rewrite["per_kind_db"].items())
        print(f"bfloat16 graph rewrite: PSNR change {rewrite['psnr_change_db']:+.5f} dB ({per_kind}; {verdict(rewrite['psnr_change_db'])})")
    return result


def _measure_bfloat16_command(args) -> None:
    from enhancer.training.bfloat16 import record

    photos = _validation_photos(args.data)
    if not photos:
        raise SystemExit(f"enhancer: no validation photos in {args.data / 'val'} (enhancer dataset makes them)")
    from enhancer.precision import METADATA_KEY, REWRITE_METADATA_KEY

    earlier = json.loads((Path(args.model) / "metadata.json").read_text()).get(METADATA_KEY) or {}
    measurement = _measure_bfloat16(args.model, photos)
    if REWRITE_METADATA_KEY not in measurement and REWRITE_METADATA_KEY in earlier:
        # not measurable on this CPU: keep the graph-rewrite record made on one where it is
        measurement[REWRITE_METADATA_KEY] = earlier[REWRITE_METADATA_KEY]
    path = record(args.model, measurement)
    print(f"recorded in {path}")


def _evaluate(args) -> None:
    if args.scale > 1:
        return _evaluate_upscale(args)
    from enhancer.training import model_card
    from enhancer.training.evaluate import evaluate

    args.model = args.model or DEFAULT_MODEL
    meta = args.model / "metadata.json"
    scale = json.loads(meta.read_text()).get("scale", 1) if meta.exists() else 1
    if scale > 1:
        raise SystemExit(f"enhancer: {args.model} enlarges {scale} times; evaluate it with --scale {scale}")
    models = {args.model.name: args.model}
    for spec in args.compare:
        name, _, path = spec.partition("=")
        models[name] = Path(path)
    out = args.out or args.model / "eval"
    result = evaluate(models, args.testset, out, train_dir=args.data / "train")
    if args.budget_runs:
        from enhancer.training.evaluate import budget_comparison

        (out / "comparison.md").write_text(budget_comparison([Path(p) for p in args.budget_runs.split(",")]))
    result.update(machine=machine_description(), date=time.strftime("%Y-%m-%d"))
    (out / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    if out == args.model / "eval":
        model_card.write(args.model)
    print((out / "evaluation.md").read_text())


def _validate_high_quality(args) -> None:
    """`validate-high-quality`: the validation gains at qualities 85-98 that set the pass-through."""
    from enhancer.training import model_card
    from enhancer.training.evaluate import high_quality_validation

    result = high_quality_validation(args.model, args.data, args.fonts, scans_dir=args.scans)
    result.update(machine=machine_description(), date=time.strftime("%Y-%m-%d"))
    out = args.model / "eval" / "high_quality_validation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(model_card.high_quality_table(result, digits=3)))
    print(f"(mean / worst image, dB; written to {out})")


def _calibrate_steps(args) -> None:
    """`calibrate-steps`: choose a restorer's auto_step_scale on the validation set and record it."""
    from enhancer.training.step_calibration import calibrate

    record = calibrate(args.model, args.data, args.fonts, args.scans,
                       about={"machine": machine_description(), "date": time.strftime("%Y-%m-%d")})
    print(f"auto_step_scale (quality, factor): {record['auto_step_scale']}")
    for kind, rows in record["summary"].items():
        cells = "  ".join(f"q{q} x{r['factor']}: {r['own_steps']['worst']:+.2f} -> {r['chosen']['worst']:+.2f}" for q, r in rows.items())
        print(f"{kind} (worst image, own steps -> chosen): {cells}")
    print(f"(written to {args.model / 'metadata.json'} and {args.model / 'eval' / 'step_calibration.json'})")


def _evaluate_upscale(args) -> None:
    """`evaluate --scale 2|4`: the upscaler against bicubic, Lanczos and restore-then-bicubic."""
    if args.compare or args.budget_runs:
        raise SystemExit("enhancer: --compare and --budget-runs are for 1x models; with --scale the baselines are fixed")
    from enhancer.models.contract import ModelLoadError
    from enhancer.training import model_card
    from enhancer.training.evaluate_upscale import evaluate_upscale

    model = args.model or Path(f"weights/upscale-x{args.scale}")
    out = args.out or model / "eval"
    try:
        result = evaluate_upscale(model, args.restorer, args.testset, out, scale=args.scale)
    except (ModelLoadError, ValueError) as exc:
        raise SystemExit(f"enhancer: {exc}") from None
    result.update(machine=machine_description(), date=time.strftime("%Y-%m-%d"))
    (out / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    if out == model / "eval":
        model_card.write(model)
    print((out / "evaluation.md").read_text())


def _add_restorer_validation_args(p: argparse.ArgumentParser) -> None:
    """The model folder and the validation data of the commands that measure a restorer on it."""
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="prepared photos; their val/ is used")
    p.add_argument("--fonts", type=Path, default=Path(TRAIN_DEFAULTS.fonts_dir))
    p.add_argument("--scans", type=Path, default=Path(TRAIN_DEFAULTS.scans_dir),
                   help="scanned pages (enhancer fetch-scans); their val/ is used where it exists")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the training subcommands to the `enhancer` command's subparsers."""
    p = subparsers.add_parser("fetch-photos", help="download free training photos (Debian packages, scikit-learn)")
    p.add_argument("--out", type=Path, default=Path("data/raw"))
    p.add_argument("--puzzles", action="store_true",
                   help="also palapeli's photo puzzles (man-made scenes; the training photos from dejpeg-q7 on)")
    p.set_defaults(func=_fetch_photos)

    p = subparsers.add_parser("fetch-fonts", help="download the training fonts (Debian font packages, unpacked, not installed)")
    p.add_argument("--out", type=Path, default=Path(TRAIN_DEFAULTS.fonts_dir))
    p.set_defaults(func=_fetch_fonts)

    p = subparsers.add_parser("fetch-scans", help="download real scanned pages for training mix 3 (OCRmyPDF's test resources, PyPI)")
    p.add_argument("--out", type=Path, default=Path(TRAIN_DEFAULTS.scans_dir))
    p.set_defaults(func=_fetch_scans)

    p = subparsers.add_parser("fetch-textures", help="download fine texture tiles for training mixes with texture (Debian's krita-data)")
    p.add_argument("--out", type=Path, default=Path(TRAIN_DEFAULTS.textures_dir))
    p.set_defaults(func=_fetch_textures)

    p = subparsers.add_parser("testset", help="build the test set (kinds training lacks, from sources it never uses)")
    p.add_argument("--out", type=Path, default=DEFAULT_TESTSET)
    p.set_defaults(func=_testset)

    p = subparsers.add_parser("dataset", help="prepare a folder of photos for training (downscale, hold out validation)")
    p.add_argument("source", type=Path, help="folder of photographs (e.g. data/raw, or DIV2K)")
    p.add_argument("--out", type=Path, default=DEFAULT_DATA)
    p.add_argument("--val", help="comma-separated file stems to hold out (default: a fixed set of 4)")
    p.add_argument("--min-downscale", type=float, default=2.0)
    p.add_argument("--max-side", type=int, default=2048)
    p.add_argument("--testset", type=Path, default=None,
                   help=f"test set folder no photo may also be in (default {DEFAULT_TESTSET} when it exists)")
    p.set_defaults(func=_dataset)

    p = subparsers.add_parser("train", help="train (or resume) a restoration network")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run directory; an existing one is resumed")
    p.add_argument("--architecture", default="dejpeg", choices=["dejpeg", "dejpeg_q", "dejpeg_q_deep", "prototype", "upscale_x2", "upscale_x4",
                                                                "upscale_x2_slim", "upscale_x4_slim"],
                   help="dejpeg_q is told the file's quantisation tables (its training mixes in rendered content); "
                   "upscale_x2/x4 enlarge (--init-weights: a dejpeg_q .weights.h5 for their restorer, or a same-scale "
                   "upscaler's .weights.h5 to continue it, or a wider one's to start a _slim head from its strongest channels; "
                   "--patch-size "
                   "is the small image's)")
    p.add_argument("--fonts", type=Path, default=Path(TRAIN_DEFAULTS.fonts_dir), help="training fonts (enhancer fetch-fonts)")
    p.add_argument("--mix", type=int, choices=(1, 2, 3, 4, 5, 6, 7), default=TRAIN_DEFAULTS.mix,
                   help="dejpeg_q's training mix: 1 as the first runs, 2 adds grain, simulated scans and grey colour "
                   "files, 3 adds real scanned pages (restorers only), 4 adds hard truths: an earlier good save kept "
                   "in the target, stronger noise also on text and pages, 5 adds fine texture tiles, 6 adds soft truths "
                   "(enlarged, out of focus or sharpened content), 7 adds re-saves at the same block grid; an upscaler's mix 3 adds fine texture tiles and soft "
                   "truths (pictures already enlarged or out of focus), 4 enlarges those from more than the scale smaller, "
                   "5 draws more texture")
    p.add_argument("--scans", type=Path, default=Path(TRAIN_DEFAULTS.scans_dir), help="scanned pages for mix 3 and 4 (enhancer fetch-scans)")
    p.add_argument("--textures", type=Path, default=Path(TRAIN_DEFAULTS.textures_dir),
                   help="texture tiles for a restorer's mix 5 on and an upscaler's mix 3 on (enhancer fetch-textures)")
    p.add_argument("--relative-floor", type=float, default=TRAIN_DEFAULTS.relative_floor,
                   help="floor under the input's MSE in the relative loss")
    p.add_argument("--steps", type=int, default=TRAIN_DEFAULTS.steps)
    p.add_argument("--loss", choices=LOSSES, default=TRAIN_DEFAULTS.loss,
                   help="relative (default): each patch's squared error over its JPEG input's; mse: the "
                        "prototype's; see TrainConfig.loss")
    p.add_argument("--ema-decay", type=float, default=TRAIN_DEFAULTS.ema_decay,
                   help="moving average of the weights used for validation and export (0: off)")
    p.add_argument("--steps-per-epoch", type=int, default=TRAIN_DEFAULTS.steps_per_epoch)
    p.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS.batch_size)
    p.add_argument("--patch-size", type=int, default=TRAIN_DEFAULTS.patch_size)
    p.add_argument("--learning-rate", type=float, default=TRAIN_DEFAULTS.learning_rate)
    p.add_argument("--warmup-steps", type=int, default=TRAIN_DEFAULTS.warmup_steps)
    p.add_argument("--init-weights", type=Path,
                   help="fine-tune from these .weights.h5, or from a served dejpeg SavedModel folder's convolutions")
    p.add_argument("--seed", type=int, default=TRAIN_DEFAULTS.seed)
    p.add_argument("--max-minutes", type=float, help="stop after this long (at an epoch end); rerun to resume")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("export", help="export a run as the served SavedModel + model card")
    p.add_argument("--run", type=Path, default=DEFAULT_RUN)
    p.add_argument("--weights", choices=["best", "final", "latest", "average"], default="final",
                   help="best/final: saved averages; latest: the checkpoint's raw weights; average: its weight average")
    p.add_argument("--out", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--data", type=Path, help="photos whose val/ the bfloat16 change is measured on (default: the run's)")
    p.set_defaults(func=_export)

    p = subparsers.add_parser("measure-bfloat16",
                              help="record a model folder's float32 -> bfloat16 PSNR change in its metadata.json")  # fmt: skip
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="prepared photos; their val/ is used")
    p.set_defaults(func=_measure_bfloat16_command)

    p = subparsers.add_parser("validate-high-quality",
                              help="a restorer's gains on the validation set's good JPEGs (q85-98): where pass-through should start")  # fmt: skip
    _add_restorer_validation_args(p)
    p.set_defaults(func=_validate_high_quality)

    p = subparsers.add_parser("calibrate-steps",
                              help="choose how much smaller than a file's steps a restorer is told under strength auto "
                              "(validation set; writes auto_step_scale into its metadata.json)")  # fmt: skip
    _add_restorer_validation_args(p)
    p.set_defaults(func=_calibrate_steps)

    p = subparsers.add_parser("evaluate", help="PSNR/SSIM on held-out photos per JPEG quality (--scale 2|4: an upscaler "
                              "against bicubic, Lanczos, restore+bicubic); table, crops")  # fmt: skip
    p.add_argument("--scale", type=int, choices=(1, 2, 4), default=1,
                   help="1: a restorer; 2 or 4: an upscaler of that scale (its metadata.json must say so)")
    p.add_argument("--model", type=Path, help=f"model folder (default {DEFAULT_MODEL}, or weights/upscale-xSCALE)")
    p.add_argument("--restorer", type=Path, default=DEFAULT_MODEL,
                   help="with --scale: the 1x model of the restore-then-bicubic baseline")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=DIR", help="another SavedModel to put beside it")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="training photos (NLM's strength is tuned on them)")
    p.add_argument("--testset", type=Path, default=DEFAULT_TESTSET, help="the test set (enhancer testset)")
    p.add_argument("--out", type=Path, help="default: MODEL/eval (and MODEL/MODEL_CARD.md is regenerated)")
    p.add_argument("--budget-runs", help="comma-separated run dirs to compare at equal training time (from their log.csv)")
    p.set_defaults(func=_evaluate)

    logging.getLogger("enhancer").setLevel(logging.INFO)
