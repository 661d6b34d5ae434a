"""One module per benchmark: `run(profile)` measures and returns what results/<name>.json holds
(registered in benchmarks.run), or a command of its own (soak, scaleout)."""
