"""fl_app.model: parameter counts of both networks (the 2NN matches McMahan et al.),
output shape, seeded initialisation, and the get_weights/set_weights round trip with
its shape and count checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_app.model import build_model, get_weights, set_weights

MODELS = ["mlp", "2nn"]


def _num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mlp", 784 * 256 + 256 + 256 * 10 + 10),
        ("2nn", 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10),
    ],
)
def test_parameter_count(name: str, expected: int) -> None:
    assert _num_parameters(build_model(name)) == expected


def test_2nn_has_the_papers_parameter_count() -> None:
    # McMahan et al. (2017), section 3, give 199,210 parameters for their 2NN
    # (784-200-200-10, ReLU); the mlp is 784-256-10.
    assert _num_parameters(build_model("2nn")) == 199_210
    assert _num_parameters(build_model("mlp")) == 203_530


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", [1, 7])
def test_output_is_batch_by_ten_logits(name: str, batch: int) -> None:
    out = build_model(name, seed=0)(torch.randn(batch, 784))
    assert out.shape == (batch, 10)
    assert out.dtype == torch.float32


def test_unknown_model_is_rejected() -> None:
    with pytest.raises(ValueError, match="cnn"):
        build_model("cnn")


@pytest.mark.parametrize("name", MODELS)
def test_seed_fixes_the_initial_weights(name: str) -> None:
    first, again, other = (get_weights(build_model(name, seed=s)) for s in (3, 3, 4))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_seeded_build_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    build_model("mlp", seed=1)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", MODELS)
def test_get_weights_follows_state_dict_and_copies(name: str) -> None:
    model = build_model(name, seed=0)
    weights = get_weights(model)
    state = model.state_dict()
    assert [w.shape for w in weights] == [tuple(t.shape) for t in state.values()]
    assert all(w.dtype == np.float32 for w in weights)
    weights[0][...] = 123.0  # editing the copy must not touch the model
    assert not torch.any(next(iter(model.state_dict().values())) == 123.0)


@pytest.mark.parametrize("name", MODELS)
def test_set_weights_round_trip(name: str) -> None:
    source, target = build_model(name, seed=1), build_model(name, seed=2)
    set_weights(target, get_weights(source))
    for a, b in zip(get_weights(target), get_weights(source), strict=True):
        np.testing.assert_array_equal(a, b)
    x = torch.randn(5, 784)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_set_weights_converts_float64_to_the_model_dtype() -> None:
    model = build_model("mlp", seed=0)
    weights = [w.astype(np.float64) + 1.0 for w in get_weights(model)]
    set_weights(model, weights)
    for got, want in zip(get_weights(model), weights, strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_set_weights_rejects_a_wrong_shape_and_changes_nothing() -> None:
    model = build_model("2nn", seed=0)
    before = get_weights(model)
    weights = get_weights(build_model("2nn", seed=1))
    weights[-1] = np.zeros(11, dtype=np.float32)  # last bias: 10 expected
    with pytest.raises(ValueError, match="shape"):
        set_weights(model, weights)
    for a, b in zip(get_weights(model), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_set_weights_rejects_a_transposed_matrix() -> None:
    model = build_model("mlp", seed=0)
    weights = get_weights(model)
    weights[0] = weights[0].T.copy()
    with pytest.raises(ValueError, match="shape"):
        set_weights(model, weights)


@pytest.mark.parametrize("drop", [1, -1])
def test_set_weights_rejects_a_wrong_count(drop: int) -> None:
    model = build_model("2nn", seed=0)
    weights = get_weights(model)
    wrong = weights[:-1] if drop == 1 else [*weights, weights[-1]]
    with pytest.raises(ValueError, match="arrays"):
        set_weights(model, wrong)


def test_weights_of_one_model_do_not_fit_the_other() -> None:
    with pytest.raises(ValueError):
        set_weights(build_model("2nn"), get_weights(build_model("mlp")))
