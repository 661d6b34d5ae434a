"""Starting a narrower upscaler head from a trained wider one (`training.head_pruning`)."""

from __future__ import annotations

import numpy as np
import pytest

from enhancer.training import head_pruning, network


def _upscaler(channels: int, blocks: int = 2):
    restorer = network.build_dejpeg_q(8, 16, 1, name="restorer")
    return network.build_upscaler(2, head_channels=channels, head_blocks=blocks, restorer=restorer)


def _randomised(model, seed: int = 0):
    rng = np.random.default_rng(seed)
    for var in model.weights:
        var.assign(rng.normal(0, 0.1, var.shape).astype("float32"))
    return model


def _silence(model, dead: dict[str, list[int]]) -> None:
    """Zero the weights and bias that make the given output channels of head layers."""
    for name, channels in dead.items():
        kernel, bias = model.get_layer(name).get_weights()
        kernel[..., channels] = 0
        bias[channels] = 0
        model.get_layer(name).set_weights([kernel, bias])


def test_pruning_away_dead_channels_keeps_the_wide_net_s_answer(tmp_path):
    """Channels that carry nothing score zero, so they are the ones dropped, and the narrower
    net answers exactly as the wide one; the skip pair (up_in, last block) drops one shared set."""
    wide = _randomised(_upscaler(8))
    _silence(wide, {"up_in": [1, 6], "up_0": [0, 3], "up_1": [1, 6]})
    wide.save_weights(tmp_path / "wide.weights.h5")
    assert head_pruning.stored_head(str(tmp_path / "wide.weights.h5")) == (8, 2)

    slim = _randomised(_upscaler(6), seed=1)
    network.load_init_weights(slim, str(tmp_path / "wide.weights.h5"), scale=2)
    assert head_pruning.head_of(slim) == (6, 2)

    rng = np.random.default_rng(2)
    image = rng.uniform(0, 1, (1, 32, 32, 3)).astype("float32")
    quantization = np.zeros((1, network.QUANTIZATION_LENGTH), "float32")
    want = wide.predict([image, quantization], verbose=0)
    got = slim.predict([image, quantization], verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_kept_channels_are_the_strongest_and_shared_across_the_skip():
    rng = np.random.default_rng(3)
    kernels = [rng.normal(0, 1, (3, 3, 3, 6)), rng.normal(0, 1, (3, 3, 6, 6)), rng.normal(0, 1, (3, 3, 6, 12))]
    kernels[0][..., 4] *= 100  # up_in's channel 4 is made strongly and read by up_out through the skip
    kernels[1][..., 2] *= 1e-3  # the block's channel 2 is nearly dead, but shares the skip's set
    kept = head_pruning.kept_channels(kernels, 4)
    assert len(kept) == 2 and all(len(k) == 4 for k in kept)
    assert 4 in kept[0]
    np.testing.assert_array_equal(kept[0], kept[1])


def test_a_head_cannot_be_started_from_a_narrower_or_shallower_one(tmp_path):
    _upscaler(6).save_weights(tmp_path / "six.weights.h5")
    with pytest.raises(ValueError, match="narrower head of the same depth"):
        head_pruning.load_pruned(_upscaler(8), str(tmp_path / "six.weights.h5"), scale=2)
    with pytest.raises(ValueError, match="narrower head of the same depth"):
        head_pruning.load_pruned(_upscaler(4, blocks=1), str(tmp_path / "six.weights.h5"), scale=2)


def test_the_slim_architectures_cost_less_than_the_shipped_ones():
    for scale in (2, 4):
        wide, slim = network.build(f"upscale_x{scale}"), network.build(f"upscale_x{scale}_slim")
        assert network.output_scale(slim) == scale
        assert network.macs_per_pixel(slim) < 0.8 * network.macs_per_pixel(wide)
        assert network.takes_quantization(slim)


def test_an_upscaler_card_says_where_a_slim_head_started():
    from enhancer.training import model_card

    slim = {"architecture": "upscale_x2_slim", "scale": 2, "recipe": {"init_weights": "training-runs/upscale-x2c/best.weights.h5"}}
    lines = "\n".join(model_card._slim_head_lines(slim))
    assert "training-runs/upscale-x2c/best.weights.h5" in lines and "head_pruning" in lines
    assert model_card._slim_head_lines({"architecture": "upscale_x2", "scale": 2}) == []
    # a run that continues a slim head names no pruning start of its own: the narrowing run is a base run
    continued = {**slim, "recipe": {"init_weights": "training-runs/upscale-x2t/best.weights.h5"},
                 "base_run": {"recipe": {"architecture": "upscale_x2_slim"}}}
    lines = "\n".join(model_card._slim_head_lines(continued))
    assert "continues one with the same head" in lines and "upscale-x2t" not in lines


def test_a_card_names_the_step_its_best_weights_come_from():
    """`best` is the step whose validation score was highest (the score training used), not the last."""
    from enhancer.training import model_card

    log = "step,elapsed_s,lr,loss,train_loss,gain_clean,gain_q50\n500,1,0,relative,0,1.0,0.5\n1000,2,0,relative,0,1.2,0.6\n" \
          "1500,3,0,relative,0,1.3,-0.2\n"
    meta = {"architecture": "upscale_x2_slim", "scale": 2, "weights": "best", "trained_steps": 1500, "log": log}
    assert "step 1000, the validation's best score" in model_card._exported_weights_line(meta)
    assert model_card._exported_weights_line({**meta, "weights": "final"}) == "- Exported weights: `final` (step 1500 reached)"


def test_every_architecture_is_offered_by_the_cli_and_conditioned_as_built():
    """The CLI lists architectures without importing TensorFlow, so it keeps its own copy of the names;
    `CONDITIONED` is derived from the names: both must agree with what the builders make."""
    import argparse

    from enhancer.training import commands

    subparsers = argparse.ArgumentParser().add_subparsers()
    commands.register(subparsers)
    (action,) = (a for a in subparsers.choices["train"]._actions if a.dest == "architecture")
    assert sorted(action.choices) == sorted(network.ARCHITECTURES)
    for name in ("dejpeg_q", "dejpeg_q_deep", "upscale_x2", "upscale_x4_slim", "dejpeg"):
        assert (name in network.CONDITIONED) == network.takes_quantization(network.build(name))
