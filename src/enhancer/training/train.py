"""Train a restoration network on 2 CPU cores: seeded, checkpointed, resumable, logged to CSV.

A run lives in one directory: `config.json` (the recipe), `log.csv` (one row per epoch with the
validation PSNR gain per JPEG quality), `checkpoint/` (latest weights + optimizer state + step) and
`best.weights.h5`. Running the same command again resumes from the checkpoint and, because batch
`step` depends only on (seed, step), sees exactly the data an uninterrupted run would have seen.
"""

from __future__ import annotations

import csv
import json
import logging
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

VALIDATION_QUALITIES = (10, 30, 90)
#: Validation of a conditioned model: photo and screen-content qualities, and the blind path.
CONDITIONED_VALIDATION_QUALITIES = (10, 30, 75, 90)


@dataclass
class TrainConfig:
    """The recipe; saved with the run so a resume uses the same one."""

    data_dir: str = "data/photos"
    run_dir: str = "runs/dejpeg"
    architecture: str = "dejpeg"
    steps: int = 16000
    steps_per_epoch: int = 500
    batch_size: int = 16
    patch_size: int = 96
    learning_rate: float = 7e-4
    final_learning_rate: float = 1e-5
    warmup_steps: int = 300
    seed: int = 1234
    val_crop: int = 512
    #: Loss schedule. "mse" lets heavily damaged patches (large errors) dominate: the net learns to
    #: deblock quickly but also smooths good images (-1.55 dB at q90 after 1500 steps in a trial).
    #: "psnr" (mean over patches of log MSE = minus the mean PSNR in dB) weighs every quality alike
    #: but, from scratch, sat at the identity (+0.00 dB after 500 steps). "mse-then-psnr" learns the
    #: deblocking features with MSE, then switches to the PSNR loss at `psnr_from` of the run.
    #: "relative" divides each patch's squared error by the JPEG input's own (plus a floor): like
    #: "psnr" it charges a good image for any harm, but it stays quadratic, so no flat patch
    #: can dominate a batch's gradient (our reading of the log loss's oscillation). It trained
    #: steadily: +1.23 dB at q10, -0.01 at q90 on validation crops after 16000 steps.
    loss: str = "relative"
    psnr_from: float = 0.45
    #: Start from these weights (fine-tuning) instead of the identity initialisation.
    init_weights: str | None = None
    #: Exponential moving average of the weights, used for validation, best.weights.h5 and
    #: final.weights.h5 (0 disables). The raw weights' validation swung by 0.3-0.5 dB between
    #: epochs; the average smooths that step-to-step noise away.
    ema_decay: float = 0.999
    #: Folder of training fonts for the rendered content of conditioned models (`enhancer fetch-fonts`).
    fonts_dir: str = "data/fonts"
    #: Floor under the input's MSE in the relative loss (see RELATIVE_LOSS_FLOOR).
    relative_floor: float = 1e-4
    #: Training mix of a conditioned model (enhancer.training.mixture): 1 as the first runs were
    #: made (a saved recipe without this field is mix 1), 2 with grain, scans and grey colour files,
    #: 3 adds real scanned pages (from `scans_dir`), 4 hard truths, 5 texture tiles (from
    #: `textures_dir`), 6 soft truths, 7 re-saves at the same block grid; an upscaler's mix 3 adds texture tiles and soft truths, 4
    #: makes those soft enough to see in the small image.
    mix: int = 1
    #: Scanned pages for mix 3 (`enhancer fetch-scans`): train/ is trained on, val/ validated on.
    scans_dir: str = "data/scans"
    #: Texture tiles for a restorer's mix 5 and an upscaler's mix 3 (`enhancer fetch-textures`), split the same way.
    textures_dir: str = "data/textures"


#: Floor under a patch's MSE in the psnr loss (a 50 dB cap), so flat patches cannot dominate.
PSNR_LOSS_EPS = 1e-5
#: Floor added to the input's MSE in the relative loss (40 dB): at q90 a patch's own error is
#: ~1.6e-4, so a near-perfect flat patch weighs at most ~3x a typical good one.
RELATIVE_LOSS_FLOOR = 1e-4
#: Scale of the psnr loss: its gradient equals the MSE gradient for a patch with this MSE (a
#: typical one), so Adam's running statistics carry over the switch without a jump.
PSNR_LOSS_SCALE = 1e-3


#: The loss schedules `TrainConfig.loss` accepts.
LOSSES = ("relative", "mse-then-psnr", "psnr", "mse")


def loss_kind(cfg: TrainConfig, step: int) -> str:
    """Which loss the step uses: 'mse' or 'psnr'."""
    if cfg.loss == "mse-then-psnr":
        return "psnr" if step >= cfg.psnr_from * cfg.steps else "mse"
    return cfg.loss


def patch_loss(kind: str, restored, clean, damaged, floor: float = RELATIVE_LOSS_FLOOR):
    """Training loss over a batch: mean squared error, minus the mean PSNR of the patches (scaled),
    or the mean of each patch's squared error relative to its JPEG input's."""
    import tensorflow as tf

    per_patch = tf.reduce_mean(tf.square(restored - clean), axis=[1, 2, 3])
    if kind == "mse":
        return tf.reduce_mean(per_patch)
    if kind == "psnr":
        return PSNR_LOSS_SCALE * tf.reduce_mean(tf.math.log(per_patch + PSNR_LOSS_EPS))
    if kind == "relative":
        before = tf.reduce_mean(tf.square(damaged - clean), axis=[1, 2, 3])
        return tf.reduce_mean(per_patch / (before + floor))
    raise ValueError(f"unknown loss {kind!r}; use one of {LOSSES}")


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to `final_learning_rate` at `steps`."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    cosine = 0.5 * (1 + np.cos(np.pi * progress))
    return float(cfg.final_learning_rate + (cfg.learning_rate - cfg.final_learning_rate) * cosine)


class _Prefetcher:
    """Builds upcoming batches on a thread while TensorFlow (which releases the GIL) trains.

    The stream ends after `stop` (at once for a run that already reached it, which a rerun of a
    finished run is), and a sampler error is raised in the training loop rather than leaving it
    waiting for a batch that will never come.
    """

    _END = object()

    def __init__(self, sampler, start: int, stop: int, depth: int = 4):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._fill, args=(sampler, start, stop), daemon=True)
        self._thread.start()

    def _fill(self, sampler, start: int, stop: int) -> None:
        try:
            for step in range(start, stop):
                self._queue.put((step, sampler.batch(step)))
        except BaseException as exc:  # handed to the consumer, which raises it
            self._queue.put(exc)
            return
        self._queue.put(self._END)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item


class _Checkpoint:
    """Latest weights, optimizer slots and step, written atomically (a kill mid-save loses nothing)."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir / "checkpoint"

    def exists(self) -> bool:
        return (self.dir / "state.json").exists()

    def save(self, model, optimizer, average: _WeightAverage, state: dict) -> None:
        tmp = self.dir.with_name("checkpoint.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        model.save_weights(str(tmp / "model.weights.h5"))
        np.savez(tmp / "optimizer.npz", *[np.asarray(v) for v in optimizer.variables])
        np.savez(tmp / "average.npz", *average.values())
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        old = self.dir.with_name("checkpoint.old")
        if self.dir.exists():
            self.dir.rename(old)
        tmp.rename(self.dir)
        if old.exists():
            import shutil

            shutil.rmtree(old)

    def load(self, model, optimizer, average: _WeightAverage) -> dict:
        model.load_weights(str(self.dir / "model.weights.h5"))
        optimizer.build(model.trainable_variables)
        for var, value in zip(optimizer.variables, self._arrays("optimizer.npz"), strict=True):
            var.assign(value)
        average_path = self.dir / "average.npz"
        # Checkpoints written before the average existed start it from the current weights.
        average.load(self._arrays("average.npz") if average_path.exists() else [np.asarray(w) for w in average.weights])
        return json.loads((self.dir / "state.json").read_text())

    def _arrays(self, name: str) -> list[np.ndarray]:
        with np.load(self.dir / name) as saved:
            return [saved[f"arr_{i}"] for i in range(len(saved.files))]


class _WeightAverage:
    """Exponential moving average of a model's weights, updated inside the compiled train step.

    The decay ramps up as (1 + step) / (10 + step) so early averages are not stuck at the
    identity initialisation. `swapped_in` puts the average into the model for validation/saving.
    """

    def __init__(self, model, decay: float):
        import tensorflow as tf

        self.decay = float(decay)
        self.weights = model.trainable_variables
        self.average = [tf.Variable(w, trainable=False) for w in self.weights]

    def update(self, step):
        import tensorflow as tf

        step = tf.cast(step, tf.float32)
        d = tf.minimum(self.decay, (1.0 + step) / (10.0 + step))
        for avg, w in zip(self.average, self.weights):
            avg.assign(d * avg + (1.0 - d) * w)

    def values(self) -> list[np.ndarray]:
        return [np.asarray(v) for v in self.average]

    def load(self, values: list[np.ndarray]) -> None:
        for var, value in zip(self.average, values, strict=True):
            var.assign(value)

    @contextmanager
    def swapped_in(self):
        if self.decay <= 0:
            yield
            return
        raw = [np.asarray(w) for w in self.weights]
        for w, avg in zip(self.weights, self.average):
            w.assign(avg)
        try:
            yield
        finally:
            for w, value in zip(self.weights, raw):
                w.assign(value)


def bicubic_baseline(small: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`small` enlarged to `shape` with OpenCV's bicubic (the baseline an upscaler must beat)."""
    if small.shape == shape:
        return small
    return np.clip(cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC), 0, 1)


def evaluate_gain(predict, pairs: dict[str, list[tuple[tuple, np.ndarray]]]) -> dict[str, float]:
    """Mean PSNR of input and output per validation label, their gain, and the mean |correction|.

    Each item is (model inputs, clean); the first input is the damaged image (for an upscaler the
    small one, compared after bicubic enlargement). Labels whose inputs are already clean (the
    blind path on undamaged images) report only the output's PSNR.
    """
    from enhancer.training.dataset import psnr

    row: dict[str, float] = {}
    corrections = []
    for label, items in pairs.items():
        before, after = [], []
        for inputs, clean in items:
            restored = np.clip(predict(*(a[None] for a in inputs))[0], 0, 1)
            baseline = bicubic_baseline(inputs[0], clean.shape)
            inputs = (baseline, *inputs[1:])
            before.append(psnr(inputs[0], clean))
            after.append(psnr(restored, clean))
            corrections.append(float(np.mean(np.abs(restored - inputs[0]))))
        row[f"psnr_out_{label}"] = float(np.mean(after))
        if np.all(np.isfinite(before)):
            row[f"psnr_in_{label}"] = float(np.mean(before))
            row[f"gain_{label}"] = row[f"psnr_out_{label}"] - row[f"psnr_in_{label}"]
    row["mean_abs_correction"] = float(np.mean(corrections))
    return row


#: Validation labels where any loss counts as harm in the checkpoint score.
HIGH_QUALITY_LABELS = ("gain_q75", "gain_q90", "gain_screen_q75", "gain_screen_q90",
                       "gain_grey_q90", "gain_grain_q90", "gain_scan_q75", "gain_scan_q90",
                       "gain_document_q75", "gain_document_q90", "gain_noisy_page_q90", "gain_noisy_page_q95",
                       "gain_was_jpeg_q90", "gain_was_jpeg_q95", "gain_texture_q90", "gain_soft_page_q75",
                       "gain_soft_page_q90", "gain_resaved_q90", "gain_resaved_q95")  # fmt: skip


def _score(row: dict[str, float]) -> float:
    """Best = highest worst-case-aware gain: mean of the low-quality gains, penalised for any
    harm at high quality and for changing a clean image by more than 45 dB's worth."""
    gains = [row[k] for k in ("gain_q10", "gain_q30", "gain_screen_q10", "gain_screen_q30") if k in row]
    harm = sum(min(0.0, row[k]) for k in HIGH_QUALITY_LABELS if k in row)
    clean = min(0.0, min(row.get("psnr_out_clean", 99.0), row.get("psnr_out_texture_clean", 99.0)) - 45.0) * 0.1
    return float(np.mean(gains)) + 4 * harm + clean


def _score_upscale(row: dict[str, float]) -> float:
    """Best upscaler = highest mean gain over bicubic, penalised for any label it loses on."""
    gains = [v for k, v in row.items() if k.startswith("gain_")]
    return float(np.mean(gains)) + 4 * sum(min(0.0, g) for g in gains)


def checkpoint_score(row: dict[str, float], scale: int) -> float:
    """The score that picks a run's `best` checkpoint from its validation row (restorer or upscaler)."""
    return _score(row) if scale == 1 else _score_upscale(row)


#: The unsharp mask (Gaussian sigma, amount) that makes a validation page's sharpened soft truth.
SOFT_PAGE_SHARPEN = (1.5, 1.0)


def validation_content(photos: list[np.ndarray], fonts: list[Path], crop: int = 512,
                       extended: bool = False, pages: list[np.ndarray] = (), hard: bool = False,
                       textures: list[np.ndarray] = (), soft: bool = False,
                       resaved: bool = False) -> dict[str, list[np.ndarray]]:
    """The clean validation images of a conditioned model, per kind (BGR uint8): the held-out
    photos' centre crops and rendered screen content (seeds the training stream never draws);
    `extended` (training mix 2) adds those photos in grey and with grain, and simulated scans;
    `pages` (mix 3: the held-out real scans) adds them as "document"; `hard` (mix 4) adds hard
    truths (enhancer.training.step_calibration): the scans with noise ("noisy_page") and the photos
    already a JPEG before ("was_jpeg"); `textures` (mix 5: the held-out tiles) adds them at their
    size and at half of it ("texture"); `soft` (mix 6) adds the scans as soft truths ("soft_page":
    enlarged from a third of their size, and sharpened, `SOFT_PAGE_SHARPEN`); `resaved` (mix 7) the
    photos and scans already a q85 JPEG at the same block grid ("resaved")."""
    from enhancer.training import documents, synthetic
    from enhancer.training.dataset import centre_crop

    rng = np.random.default_rng(987_654_321)
    screens = [render(rng, crop, fonts) for render in (synthetic.text_page, synthetic.screen) * 2]
    photos = [centre_crop(p, crop) for p in photos]
    content = {"photo": photos, "screen": screens}
    if extended:
        content["grey"] = [cv2.cvtColor(cv2.cvtColor(p, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR) for p in photos]
        content["grain"] = [synthetic.grain(p, rng) for p in photos]
        content["scan"] = [synthetic.scanned(synthetic.text_page(rng, crop, fonts), rng) for _ in range(4)]
    if len(pages):
        content["document"] = [centre_crop(p, crop) for p in documents.validation_pages(pages)]
    if hard:
        from enhancer.training.step_calibration import noisy, was_jpeg

        scans = content.get("document", []) + content.get("scan", [])[:2]
        content["noisy_page"] = [noisy(p, 7, rng) for p in scans]
        content["was_jpeg"] = [was_jpeg(p) for p in photos]
    if len(textures):
        tiles = [centre_crop(t, crop) for t in textures]
        halves = [cv2.resize(t, (t.shape[1] // 2, t.shape[0] // 2), interpolation=cv2.INTER_AREA) for t in tiles]
        content["texture"] = tiles + [centre_crop(h, crop // 2 // 16 * 16) for h in halves]
    all_scans = content.get("document", []) + content.get("scan", [])
    if soft:
        content["soft_page"] = ([synthetic.enlarged(p, 3) for p in all_scans]
                                + [synthetic.sharpened(p, *SOFT_PAGE_SHARPEN) for p in all_scans])
    if resaved:
        from enhancer.training.step_calibration import was_jpeg

        content["resaved"] = [was_jpeg(p, 85, shift=(0, 0)) for p in photos + all_scans]
    return content


def conditioned_validation(photos: list[np.ndarray], fonts: list[Path], crop: int = 512,
                           extended: bool = False, pages: list[np.ndarray] = (), hard: bool = False,
                           textures: list[np.ndarray] = (), soft: bool = False,
                           resaved: bool = False) -> dict[str, list]:
    """Fixed validation pairs for a conditioned model (`validation_content`): photos and screen
    content saved by OpenCV's encoder (4:2:0) and told its tables; the blind path on a q30 JPEG and
    on clean images. `extended` (runs on mix 2) adds the good files mix 1 harmed: the photos in
    grey saved as colour JPEGs and with grain (q90), and simulated scans (q75, q90); `pages` (mix 3)
    the held-out real scans (q75, q90); `hard` (mix 4) the hard truths (q90, q95); `textures`
    (mix 5) the held-out texture tiles (q50, q90, and clean on the blind path); `soft` (mix 6) the
    soft pages (q75, q90); `resaved` (mix 7) the same-grid re-saves (q90, q95)."""
    from enhancer.training import jpeg_damage

    def rgb(bgr):
        return cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0

    def told(images, quality):
        recipe = jpeg_damage.ijg_recipe(quality)
        return [((rgb(jpeg_damage.jpeg_round_trip(im, recipe)), recipe.condition()), rgb(im)) for im in images]

    content = validation_content(photos, fonts, crop, extended, pages, hard, textures, soft, resaved)
    photos, screens = content["photo"], content["screen"]
    blind = np.zeros(jpeg_damage.QUANTIZATION_LENGTH, np.float32)
    pairs: dict[str, list] = {}
    for q in CONDITIONED_VALIDATION_QUALITIES:
        pairs[f"q{q}"], pairs[f"screen_q{q}"] = told(photos, q), told(screens, q)
    pairs["blind_q30"] = [((rgb(jpeg_damage.jpeg_round_trip(im, jpeg_damage.ijg_recipe(30))), blind), rgb(im)) for im in photos]
    pairs["clean"] = [((rgb(im), blind), rgb(im)) for im in photos + screens]
    if extended:
        for label, kind, q in (("grey_q90", "grey", 90), ("grain_q90", "grain", 90), ("scan_q75", "scan", 75),
                               ("scan_q90", "scan", 90)):  # fmt: skip
            pairs[label] = told(content[kind], q)
    if "document" in content:
        for q in (75, 90):
            pairs[f"document_q{q}"] = told(content["document"], q)
    for kind, qualities in (("noisy_page", (90, 95)), ("was_jpeg", (90, 95)), ("resaved", (90, 95)), ("soft_page", (75, 90))):
        if kind in content:
            for q in qualities:
                pairs[f"{kind}_q{q}"] = told(content[kind], q)
    if "texture" in content:
        pairs["texture_q50"], pairs["texture_q90"] = told(content["texture"], 50), told(content["texture"], 90)
        pairs["texture_clean"] = [((rgb(im), blind), rgb(im)) for im in content["texture"]]
    return pairs


def train(cfg: TrainConfig, max_minutes: float | None = None, progress: bool = True) -> Path:
    """Train (or resume) the run in `cfg.run_dir`; returns the run directory.

    `max_minutes` stops early after a checkpoint (rerun the command to resume).
    """
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from enhancer.training import network
    from enhancer.training.dataset import PatchSampler, data_record, fingerprint, load_images, validation_pairs
    from enhancer.training.mixture import MixtureSampler
    from enhancer.training.synthetic import list_fonts
    from enhancer.training.upscale_data import UpscaleSampler, upscale_validation

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    if config_path.exists():
        saved = TrainConfig(**json.loads(config_path.read_text()))
        if asdict(saved) != asdict(cfg):
            log.warning("resuming %s with its saved recipe (ignoring differing arguments)", run_dir)
        cfg = saved

    keras.utils.set_random_seed(cfg.seed)
    train_images = load_images(Path(cfg.data_dir) / "train")
    val_images = load_images(Path(cfg.data_dir) / "val")
    conditioned = cfg.architecture in network.CONDITIONED
    model = network.build(cfg.architecture)
    scale = network.output_scale(model)
    scans = Path(cfg.scans_dir)
    uses_pages = conditioned and scale == 1 and cfg.mix >= 3  # only a restorer's mix 3 draws scanned pages
    pages = {split: load_images(scans / split) if uses_pages else [] for split in ("train", "val")}
    uses_textures = (scale > 1 and cfg.mix >= 3) or (conditioned and scale == 1 and cfg.mix >= 5)
    texture_folder = Path(cfg.textures_dir)
    textures = {split: load_images(texture_folder / split) if uses_textures else [] for split in ("train", "val")}
    if scale > 1:
        fonts = list_fonts(Path(cfg.fonts_dir))
        sampler = UpscaleSampler(train_images, fonts, cfg.patch_size, cfg.batch_size, cfg.seed, scale, cfg.mix,
                                 textures["train"])
        val = upscale_validation(val_images, fonts, scale, cfg.val_crop, textures["val"],
                                 soft_from=2 * scale if cfg.mix >= 4 else 2)
    elif conditioned:
        fonts = list_fonts(Path(cfg.fonts_dir))
        sampler = MixtureSampler(train_images, fonts, cfg.patch_size, cfg.batch_size, cfg.seed, cfg.mix, pages["train"],
                                 textures["train"])
        val = conditioned_validation(val_images, fonts, cfg.val_crop, extended=cfg.mix >= 2, pages=pages["val"],
                                     hard=cfg.mix >= 4, textures=textures["val"], soft=cfg.mix >= 6,
                                     resaved=cfg.mix >= 7)
    else:
        sampler = PatchSampler(train_images, cfg.patch_size, cfg.batch_size, cfg.seed)
        val = {f"q{q}": [((d,), c) for d, c in items]
               for q, items in validation_pairs(val_images, VALIDATION_QUALITIES, cfg.val_crop).items()}  # fmt: skip
    if not config_path.exists():
        record = {**asdict(cfg), "train_images": len(train_images), "val_images": len(val_images),
                  "data_fingerprint": fingerprint(train_images),
                  # which photos, by name and content: `enhancer export` copies this into metadata.json
                  "train": data_record(Path(cfg.data_dir) / "train"),
                  "val": data_record(Path(cfg.data_dir) / "val"),
                  **({"scans": {split: data_record(scans / split) for split in pages}} if uses_pages else {}),
                  **({"textures": {split: data_record(texture_folder / split) for split in textures}} if uses_textures else {})}  # fmt: skip
        config_path.write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        (run_dir / "data.json").write_text(json.dumps(record, indent=2) + "\n")

    optimizer = keras.optimizers.Adam(learning_rate=cfg.learning_rate)
    checkpoint = _Checkpoint(run_dir)
    state = {"step": 0, "elapsed_s": 0.0, "best_score": -1e9}
    if checkpoint.exists():
        average = _WeightAverage(model, cfg.ema_decay)
        state = checkpoint.load(model, optimizer, average)
        log.info("resumed %s at step %d", run_dir, state["step"])
    else:
        if cfg.init_weights:
            network.load_init_weights(model, cfg.init_weights, scale)
        optimizer.build(model.trainable_variables)
        average = _WeightAverage(model, cfg.ema_decay)

    def make_train_step(kind: str):
        @tf.function(jit_compile=False, reduce_retracing=True)
        def train_step(x, y, q, lr, step):
            optimizer.learning_rate.assign(lr)
            with tf.GradientTape() as tape:
                restored = model([x, q], training=True) if conditioned else model(x, training=True)
                baseline = x if scale == 1 else tf.image.resize(x, tf.shape(y)[1:3], method="bicubic")
                loss = patch_loss(kind, restored, y, baseline, cfg.relative_floor)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            average.update(step)
            return loss

        return train_step

    train_steps = {kind: make_train_step(kind) for kind in ("mse", "psnr", "relative")}

    predict = tf.function(lambda *inputs: model(list(inputs) if conditioned else inputs[0], training=False),
                          reduce_retracing=True)  # fmt: skip
    log_path = run_dir / "log.csv"
    start_step = state["step"]
    started = time.monotonic() - state["elapsed_s"]
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    losses: list[float] = []
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not progress, unit="step", dynamic_ncols=True)
    for step, batch in _Prefetcher(sampler, start_step, cfg.steps):
        x, y = batch[0], batch[1]
        q = batch[2] if conditioned else np.zeros((len(x), 1), np.float32)
        lr = learning_rate(cfg, step)
        kind = loss_kind(cfg, step)
        losses.append(float(train_steps[kind](tf.constant(x), tf.constant(y), tf.constant(q), tf.constant(lr, tf.float32), tf.constant(step))))
        bar.update(1)
        done = step + 1
        if done % cfg.steps_per_epoch == 0 or done == cfg.steps:
            with average.swapped_in():  # validate (and keep as best) the averaged weights
                gains = evaluate_gain(lambda *a: predict(*a).numpy(), val)
                row = {"step": done, "elapsed_s": round(time.monotonic() - started, 1), "lr": lr, "loss": kind,
                       "train_loss": float(np.mean(losses)), **gains}  # fmt: skip
                score = checkpoint_score(row, scale)
                if score > state["best_score"]:
                    state["best_score"] = score
                    model.save_weights(str(run_dir / "best.weights.h5"))
            losses.clear()
            new_file = not log_path.exists()
            with log_path.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(row))
                if new_file:
                    writer.writeheader()
                writer.writerow(row)
            bar.set_postfix({k[5:]: f"{v:+.2f}" for k, v in row.items() if k.startswith("gain_")})
            log.info("step %d: %s", done, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            state.update(step=done, elapsed_s=time.monotonic() - started)
            checkpoint.save(model, optimizer, average, state)
            if deadline is not None and time.monotonic() > deadline:
                log.info("time budget reached at step %d; rerun to resume", done)
                break
        if done >= cfg.steps:
            break
    bar.close()
    if state["step"] >= cfg.steps:
        with average.swapped_in():
            model.save_weights(str(run_dir / "final.weights.h5"))
    return run_dir
