"""The privacy audit's attacks on real replies of this app's client, as the server's
pipeline receives them (``strategies.validation.checked_arrays``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.common import NDArrays

from fl_app.audit.canaries import estimate_epsilon, gdp_delta, gdp_epsilon
from fl_app.audit.membership import lira_scores, loss_scores, separation
from fl_app.audit.reconstruction import (
    RECOVERED_PSNR,
    first_layer_inversion,
    label_from_update,
    quality,
    to_pixels,
)
from fl_app.audit.replies import fit_config, reply_as_held
from fl_app.data import Split, client_data
from fl_app.model import build_model, get_weights


@pytest.fixture(scope="module")
def examples(mnist_dir: Path) -> tuple[Split, Split]:
    return client_data(
        "mnist", str(mnist_dir), "iid", 0, 2, alpha=0.5, val_fraction=0.1, seed=1
    )


def one_example_reply(
    examples: tuple[Split, Split], index: int, weights: NDArrays
) -> NDArrays:
    """One SGD step on one example (FedSGD, B = 1) by the app's client, as the
    server's pipeline holds the reply."""
    train, _ = examples
    one = Split(train.x[index : index + 1], train.y[index : index + 1])
    return reply_as_held("2nn", weights, one, fit_config(1))


def test_one_example_comes_back_exactly_with_its_label(
    examples: tuple[Split, Split],
) -> None:
    train, _ = examples
    weights = get_weights(build_model("2nn", seed=0))
    for index in range(3):
        delta = one_example_reply(examples, index, weights)
        x = first_layer_inversion(delta)
        assert np.max(np.abs(x - train.x[index].numpy())) < 1e-4
        assert label_from_update(delta) == int(train.y[index])
        original = to_pixels(train.x[index].numpy(), "mnist")
        assert quality(original, to_pixels(x, "mnist")).recovered


def test_the_analytic_formula_on_the_sum_of_five_updates_gives_no_client_back(
    examples: tuple[Split, Split],
) -> None:
    """What SecAgg+ leaves the server: the sum. The one-example formula then blends
    every client's input, and none of the five is recovered by it (the separation
    attack, ``tests/test_audit_batch.py``, unmixes such a sum)."""
    train, _ = examples
    weights = get_weights(build_model("2nn", seed=0))
    deltas = [one_example_reply(examples, index, weights) for index in range(5)]
    total = [sum(arrays) for arrays in zip(*deltas, strict=True)]
    blend = to_pixels(first_layer_inversion(total), "mnist")
    for index in range(5):
        score = quality(to_pixels(train.x[index].numpy(), "mnist"), blend)
        assert score.psnr < RECOVERED_PSNR, (index, score)


def test_a_loss_threshold_beats_chance_on_an_overfit_model(
    examples: tuple[Split, Split],
) -> None:
    """Forty examples trained on for 60 epochs: their losses are far below those of
    examples the model never saw, and the attack's AUC shows it."""
    train, unseen = examples
    members = Split(train.x[:40], train.y[:40])
    model = build_model("2nn", seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(members.x), members.y).backward()
        optimizer.step()
    result = separation(loss_scores(model, members), loss_scores(model, unseen))
    assert result.auc > 0.8, result
    # A model that never saw either set: no better than chance.
    fresh = build_model("2nn", seed=1)
    chance = separation(loss_scores(fresh, members), loss_scores(fresh, unseen))
    assert abs(chance.auc - 0.5) < 0.2, chance


def test_separation_counts_ties_and_low_false_positive_rates() -> None:
    perfect = separation(np.array([3.0, 4.0]), np.arange(1000) / 1000)
    assert perfect.auc == 1.0 and perfect.tpr_at_fpr == {0.001: 1.0, 0.01: 1.0}
    assert separation(np.zeros(10), np.zeros(10)).auc == 0.5  # all ties: chance
    # A member above all but the 5 highest of 1000 non-members: caught at 1% FPR
    # (10 let through), not at 0.1% (1 let through).
    middling = separation(np.array([0.9945]), np.arange(1000) / 1000)
    assert middling.tpr_at_fpr == {0.001: 0.0, 0.01: 1.0}


def test_the_canary_estimate_is_zero_without_canaries_and_large_without_noise() -> None:
    rng = np.random.default_rng(0)
    floor = rng.normal(0.0, 0.01, size=1000)  # cosines of never-inserted canaries
    # Canaries never inserted: both sets are the noise floor, nothing is learnt.
    absent = estimate_epsilon(rng.normal(0.0, 0.01, size=1000), floor, delta=1e-5)
    assert absent.epsilon < 0.5, absent
    # No noise: every inserted canary stands far out of the floor.
    exposed = estimate_epsilon(rng.normal(0.3, 0.01, size=1000), floor, delta=1e-5)
    assert exposed.epsilon > 20, exposed
    # In between, the estimate grows with the separation.
    some = estimate_epsilon(rng.normal(0.02, 0.01, size=1000), floor, delta=1e-5)
    assert absent.epsilon < some.epsilon < exposed.epsilon


def test_gdp_epsilon_inverts_the_gdp_delta_curve() -> None:
    for mu in (0.5, 1.0, 3.0):
        epsilon = gdp_epsilon(mu, 1e-5)
        assert gdp_delta(epsilon, mu) == pytest.approx(1e-5, rel=1e-6)
    # More distinguishable, more ε; a mechanism that leaks nothing costs none.
    assert gdp_epsilon(0.5, 1e-5) < gdp_epsilon(1.0, 1e-5) < gdp_epsilon(3.0, 1e-5)
    assert gdp_epsilon(0.0, 1e-5) == 0.0


def test_lira_separates_members_its_shadows_say_are_in() -> None:
    """Shadows that put members' statistic 1.0 above non-members' (spread 0.3):
    a target that trained on its members is caught at low FPR; a target whose
    statistic ignores membership scores at chance."""
    rng = np.random.default_rng(0)
    n, k = 4000, 6
    shadow_in = rng.random((k, n)) < 0.5
    shadows = rng.normal(0, 0.3, (k, n)) + shadow_in + rng.normal(0, 1, n)
    offset = shadows.mean(0) - shadow_in.mean(0)  # each example's own difficulty
    members = rng.random(n) < 0.5
    trained = offset + members + rng.normal(0, 0.3, n)
    scores = lira_scores(trained, shadows, shadow_in)
    found = separation(scores[members], scores[~members])
    assert found.auc > 0.95 and found.tpr_at_fpr[0.01] > 0.3, found
    # The loss-threshold view of the same statistic cannot undo each example's
    # difficulty (spread 1): LiRA's per-example calibration is what wins.
    raw = separation(trained[members], trained[~members])
    assert raw.auc < found.auc - 0.1, (raw, found)
    blind = offset + rng.normal(0, 0.3, n)
    chance = lira_scores(blind, shadows, shadow_in)
    assert abs(separation(chance[members], chance[~members]).auc - 0.5) < 0.05
