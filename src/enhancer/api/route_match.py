"""The route label of a request that middleware answers before the router runs.

The metrics count requests by the matched route's template (`scope["route"].path`), which the
router sets. A 401 or 429 from the key check or the per-client limits, and a 415, 400, 413 or 503
from the upload checks (body type, declared length, shutdown), come before routing and would be
counted as `<unmatched>`. Those middlewares guard exact paths without parameters, whose
template is the path itself, so the path can stand in for the route.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Scope


@dataclass(frozen=True)
class GuardedPath:
    """Stands in for the route of a request answered before routing (only `path` is read)."""

    path: str


def mark_route(scope: Scope) -> None:
    """Label `scope` with its own path as route template, unless a route was already matched."""
    if scope.get("route") is None:
        scope["route"] = GuardedPath(scope["path"])


def check_guardable(paths: frozenset[str]) -> frozenset[str]:
    """`paths`, refused if one has a path parameter (its template would differ from the path)."""
    for path in paths:
        if "{" in path:
            raise ValueError(f"{path}: only exact paths can be guarded before routing")
    return paths
