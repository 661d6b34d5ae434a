"""enhancer: removes JPEG compression damage from photos, served by an async micro-batching server."""

__version__ = "0.1.0"
