"""The models one server serves: found from the settings, loaded once, chosen per request.

`ENHANCER_MODEL_DIR` names the restoring model's folder and `ENHANCER_UPSCALE_MODEL_DIRS` the
upscaling models served beside it (by default weights/dejpeg-q, plus weights/upscale-x2 and
weights/upscale-x4 once those folders hold models); `ENHANCER_MODELS_DIR` serves every model
folder under it instead, each named by its folder, so adding a model is adding a folder.
`ENHANCER_DEFAULT_MODEL` names the model a request gets when it names neither a model nor a scale;
unset, that is the only model, or else the only scale-1 model, and otherwise start-up stops and
says to set it. A request for a scale gets `for_scale`'s model. TensorFlow is imported only when
`ModelRegistry.load` actually loads SavedModels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from enhancer import conditioning, precision
from enhancer.models.contract import Model, ModelLoadError, ModelSpec

if TYPE_CHECKING:
    from enhancer.config import Settings

log = logging.getLogger(__name__)


class UnknownModelError(LookupError):
    """A request named a model (or a scale) this server does not serve; the message lists what it does."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0])


def _is_model(folder: Path) -> bool:
    return (folder / "saved_model.pb").is_file()


def model_dirs(settings: Settings) -> dict[str, Path]:
    """The model folders the settings name, by model name (the folder's name): model_dir first, then
    the upscaling models; or every model folder under models_dir, in name order."""
    if settings.models_dir is None:
        folder = settings.model_dir
        if not _is_model(folder):
            raise ModelLoadError(
                f"no SavedModel at {folder} (expected saved_model.pb there); set ENHANCER_MODEL_DIR "
                "(or ENHANCER_MODELS_DIR) or run from the repository root where weights/ lives"
            )
        found = {folder.name: folder}
        explicit = "upscale_model_dirs" in settings.model_fields_set
        for extra in settings.upscale_model_dirs:
            if not _is_model(extra):
                if explicit:
                    raise ModelLoadError(
                        f"no SavedModel at {extra} (expected saved_model.pb there), named in "
                        "ENHANCER_UPSCALE_MODEL_DIRS; fix the path, or set it to none to serve no upscaler"
                    )
                log.info("no upscaling model at %s (a default folder): not serving it", extra)
                continue
            if extra.name in found:
                raise ModelLoadError(
                    f"two model folders are named {extra.name!r} ({found[extra.name]} and {extra}); "
                    "model names (folder names) must differ"
                )
            found[extra.name] = extra
        return found
    if "model_dir" in settings.model_fields_set:  # e.g. the Docker image sets it
        log.info("ENHANCER_MODELS_DIR is set, so ENHANCER_MODEL_DIR (%s) is not used", settings.model_dir)
    root = settings.models_dir
    if not root.is_dir():
        raise ModelLoadError(f"ENHANCER_MODELS_DIR {root} is not a directory")
    found = {
        path.name: path
        for path in sorted(root.iterdir())
        # hidden folders and export's half-written `<name>.tmp` are not models
        if not path.name.startswith(".") and not path.name.endswith(".tmp") and (path / "saved_model.pb").is_file()
    }
    if not found:
        raise ModelLoadError(
            f"no SavedModel folders in {root} (ENHANCER_MODELS_DIR): each model is a folder there "
            "holding saved_model.pb and metadata.json"
        )
    return found


def choose_default(specs: Mapping[str, ModelSpec], configured: str | None) -> str:
    """The model for requests that name none (see the module docstring)."""
    names = ", ".join(specs)
    if configured:
        if configured not in specs:
            raise ModelLoadError(f"ENHANCER_DEFAULT_MODEL is {configured!r}, which is not served; served: {names}")
        return configured
    if len(specs) == 1:
        return next(iter(specs))
    restorers = [name for name, spec in specs.items() if spec.scale == 1]
    if len(restorers) == 1:
        return restorers[0]
    raise ModelLoadError(
        f"{len(specs)} models are served ({names}) and {len(restorers)} of them have scale 1: set "
        "ENHANCER_DEFAULT_MODEL to the one a request that names no model should get"
    )


def model_for_scale(specs: Mapping[str, ModelSpec], default: str, scale: int) -> str:
    """The name of the model for an output `scale`: the default model if it has that scale, else
    the only one that has (UnknownModelError otherwise, naming what is served)."""
    if specs[default].scale == scale:
        return default
    matching = [name for name, spec in specs.items() if spec.scale == scale]
    if len(matching) == 1:
        return matching[0]
    if not matching:
        scales = ", ".join(map(str, sorted({spec.scale for spec in specs.values()})))
        models = ", ".join(f"{name} x{spec.scale}" for name, spec in specs.items())
        raise UnknownModelError(
            f"this server serves no model with scale {scale}; the scales it serves are {scales} (models: {models})"
        )
    raise UnknownModelError(f"several models have scale {scale} ({', '.join(matching)}); name one with 'model'")


class ModelRegistry(Mapping[str, Model]):
    """Loaded models by name, plus the default one; read-only once built."""

    def __init__(self, models: Iterable[Model], default: str | None = None):
        self._models: dict[str, Model] = {}
        for model in models:
            name = model.spec.name
            if name in self._models:
                raise ModelLoadError(f"two models are named {name!r}; model names (folder names) must differ")
            try:
                conditioning.check_supported(model.spec)
            except ValueError as exc:
                raise ModelLoadError(str(exc)) from None
            self._models[name] = model
        if not self._models:
            raise ModelLoadError("no model to serve")
        self.default = choose_default({name: m.spec for name, m in self._models.items()}, default)

    @classmethod
    def load(cls, settings: Settings, folders: Mapping[str, Path] | None = None) -> ModelRegistry:
        """Configure the device once, then load every model folder the settings name onto it
        (or only `folders`, a part of them: `enhancer enhance` loads the one model it runs).

        The precision is resolved first: bfloat16 CPU math has to be in the environment before
        the runner's module imports TensorFlow (enhancer.precision).
        """
        default = settings.default_model
        if folders is None:
            folders = model_dirs(settings)
        elif default not in folders:
            default = None  # a part of the served models, without the default: chosen among these
        plan = precision.prepare(settings.precision, folders.values())
        from enhancer.models.saved_model import SavedModelRunner, configure_device  # TensorFlow: only here

        device = configure_device(settings, plan)
        return cls((SavedModelRunner(path, device=device, xla=settings.xla) for path in folders.values()), default)

    # --- Mapping ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Model:
        return self._models[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    # --- choosing a model ---------------------------------------------------------------------
    def select(self, name: str | None) -> Model:
        """The model a request named, or the default one when it named none."""
        if name is None:
            return self._models[self.default]
        try:
            return self._models[name]
        except KeyError:
            raise UnknownModelError(f"unknown model {name!r}; this server serves: {', '.join(self._models)}") from None

    @property
    def scales(self) -> list[int]:
        """The output scales the served models have, ascending."""
        return sorted({m.spec.scale for m in self._models.values()})

    def for_scale(self, scale: int) -> Model:
        """The model for an output `scale`: the default model if it has that scale, else the only one that has."""
        specs = {name: model.spec for name, model in self._models.items()}
        return self._models[model_for_scale(specs, self.default, scale)]

    # --- what all models share ----------------------------------------------------------------
    @property
    def device(self) -> str:
        """Where the models run (one process, one TensorFlow device configuration)."""
        return self._models[self.default].device

    @property
    def device_kind(self) -> str:
        return self._models[self.default].device_kind

    @property
    def precision(self) -> str:
        return self._models[self.default].precision

    def check_tiling(self, settings: Settings) -> None:
        """Refuse tile settings any served model cannot be served with (see ModelSpec.check_tiling),
        each model with its own tile size and overlap (Settings.tiling_for)."""
        for model in self._models.values():
            model.spec.check_tiling(*settings.tiling_for(model.spec))
            if settings.solo_tile_for(model.spec) is not None:
                model.spec.check_tiling(*settings.tiling_for(model.spec, alone=True), setting="ENHANCER_SOLO_TILE_SIZE")
