"""Served models: the contract every model folder keeps (`contract`), the TensorFlow runner that
loads one (`saved_model`, the only module importing TensorFlow at serve time), and the registry of
the models one server serves (`registry`)."""
