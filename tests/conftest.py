"""Shared fixtures: the real SavedModel (loaded once per session) and the anyio backend.

Helpers (settings, test images, the app runner, `until`) are in helpers.py, imported as a module.
"""

from __future__ import annotations

import pytest
from helpers import MODEL_DIR


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def upscaler_dirs(tmp_path_factory) -> dict[int, Path]:
    """Small perturbed upscaling models (tests/upscalers.py), exported once per session: scale -> folder
    (named upscale-x2, upscale-x4, as the shipped ones will be)."""
    from upscalers import export_test_upscaler

    root = tmp_path_factory.mktemp("upscalers")
    return {scale: export_test_upscaler(scale, root / f"upscale-x{scale}") for scale in (2, 4)}


@pytest.fixture(scope="session")
def upscalers(upscaler_dirs):
    """The test upscalers loaded (float32), once per session: scale -> runner."""
    from enhancer.config import Settings
    from enhancer.models.saved_model import SavedModelRunner, configure_device

    device = configure_device(Settings(_env_file=None, precision="float32"))
    return {scale: SavedModelRunner(folder, device=device) for scale, folder in upscaler_dirs.items()}


@pytest.fixture(scope="session")
def saved_model():
    """The real SavedModel runner, loaded once for the whole session."""
    from enhancer.config import Settings
    from enhancer.models.saved_model import SavedModelRunner, configure_device

    # float32 as the tests' tolerances assume, whatever `auto` would pick on this machine
    return SavedModelRunner(MODEL_DIR, device=configure_device(Settings(_env_file=None, precision="float32")))
