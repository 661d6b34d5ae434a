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
def saved_model():
    """The real SavedModel runner, loaded once for the whole session."""
    from enhancer.config import Settings
    from enhancer.models.saved_model import SavedModelRunner, configure_device

    # float32 as the tests' tolerances assume, whatever `auto` would pick on this machine
    return SavedModelRunner(MODEL_DIR, device=configure_device(Settings(_env_file=None, precision="float32")))
