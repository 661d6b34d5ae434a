"""Shared benchmark machinery: paths and machine facts, inputs, the load generator, server
processes, quick/full profiles, plots and the summary."""
