"""Local SGD without ``torch.optim``: the same weights and loss as ``torch.optim.SGD``
bit for bit (with and without an algorithm's objective), and a fresh process that
trains never imports ``torch._dynamo`` (the 1.5 s and ~150 MB that ``torch.optim``'s
constructor costs every deployed ``flwr-clientapp`` process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.common import RecordDict
from torch import nn

from fl_app.client_parts import FedProxTerm, ScaffoldClient
from fl_app.data import Split
from fl_app.model import build_model, get_weights
from fl_app.training import LocalObjective, seeded_generator, train


def _data(n: int = 97) -> Split:
    g = torch.Generator().manual_seed(5)
    return Split(
        torch.randn(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)
    )


def _reference_train(
    model: nn.Module,
    data: Split,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    objective: LocalObjective | None = None,
) -> float:
    """The loop as it was, on ``torch.optim.SGD``."""
    batch = len(data) if batch_size <= 0 else batch_size
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    total, count = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), batch):
            index = order[start : start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(data.x[index]), data.y[index])
            extra = objective.extra_loss(model) if objective is not None else None
            (loss if extra is None else loss + extra).backward()
            if objective is not None:
                objective.correct_gradients(model)
            optimizer.step()
            total += loss.item() * len(index)
            count += len(index)
    return total / count


def _objective(kind: str, model: nn.Module) -> LocalObjective | None:
    weights = get_weights(model)
    if kind == "fedprox":
        return FedProxTerm(0.3, weights)
    if kind == "scaffold":
        rng = np.random.default_rng(1)
        variate = [rng.normal(size=w.shape).astype(np.float32) * 0.01 for w in weights]
        return ScaffoldClient(variate, state=RecordDict())
    return None


def _empty_state():
    from flwr.common import RecordDict

    return RecordDict()


@pytest.mark.parametrize("kind", ["none", "fedprox", "scaffold"])
@pytest.mark.parametrize(("epochs", "batch_size"), [(2, 10), (1, 0), (3, 32)])
def test_train_equals_torch_optim_sgd_bit_for_bit(
    kind: str, epochs: int, batch_size: int
) -> None:
    data = _data()
    ours, theirs = build_model("2nn", seed=3), build_model("2nn", seed=3)
    loss = train(
        ours,
        data,
        epochs=epochs,
        batch_size=batch_size,
        lr=0.05,
        generator=seeded_generator(42, 1, 7),
        objective=_objective(kind, ours),
    )
    expected = _reference_train(
        theirs,
        data,
        epochs=epochs,
        batch_size=batch_size,
        lr=0.05,
        generator=seeded_generator(42, 1, 7),
        objective=_objective(kind, theirs),
    )
    assert loss == expected
    for a, b in zip(get_weights(ours), get_weights(theirs), strict=True):
        np.testing.assert_array_equal(a, b)
    untrained = get_weights(build_model("2nn", seed=3))
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(get_weights(ours), untrained, strict=True)
    ), "training changed nothing"


def test_a_frozen_parameter_stays_as_it_was() -> None:
    """The frozen one is untouched while every trainable one moves (a ``train``
    that did nothing would leave both alone)."""
    model = build_model("mlp", seed=0)
    first, *rest = model.parameters()
    first.requires_grad_(False)
    before = [p.detach().clone() for p in (first, *rest)]
    train(
        model, _data(), epochs=1, batch_size=10, lr=0.1, generator=seeded_generator(1)
    )
    assert torch.equal(first, before[0])
    for param, old in zip(rest, before[1:], strict=True):
        assert not torch.equal(param, old), "a trainable parameter did not move"


def test_training_in_a_fresh_process_does_not_import_dynamo() -> None:
    code = textwrap.dedent(
        """
        import sys, torch
        from fl_app.data import Split
        from fl_app.model import build_model
        from fl_app.training import evaluate, seeded_generator, train
        data = Split(torch.randn(40, 784), torch.randint(0, 10, (40,)))
        model = build_model("2nn", seed=0)
        train(model, data, epochs=1, batch_size=10, lr=0.1,
              generator=seeded_generator(0))
        evaluate(model, data)
        print(sorted(m for m in sys.modules if m.startswith("torch._dynamo"))[:3])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
