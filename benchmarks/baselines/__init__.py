"""What the server is compared against: the raw SavedModel's own speed, a prototype-style
synchronous server, and a simulated device behind the real app."""
