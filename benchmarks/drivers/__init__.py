"""One module per benchmark: `run(profile)` measures and returns what results/<name>.json holds
(registered in benchmarks.run); scaleout and pixels_in_flight are commands of their own."""
