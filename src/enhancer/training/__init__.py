"""Data, network, training, export and evaluation of the restoration model."""
