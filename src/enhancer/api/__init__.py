"""HTTP layer: app factory, routes, error mapping and middleware."""

from enhancer.api.app import create_app, factory

__all__ = ["create_app", "factory"]
