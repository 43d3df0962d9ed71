"""Update codecs (``fl_app.compression``): each scheme decodes within its stated bound
on the 2NN's tensors and on edge cases; int8's stochastic rounding is unbiased; the
payload shrinks by the scheme's ratio; error feedback carries exactly what was not
sent, so over rounds the decoded sum follows the true one; a seed repeats a payload;
every malformed payload raises ``PayloadError`` and nothing else; a bad spec is
refused with a message naming the knob."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from statistics import NormalDist

import numpy as np
import pytest

from fl_app.compression import (
    FP16_MAX,
    SCHEMES,
    CodecSpec,
    PayloadError,
    decode,
    encode,
    payload_nbytes,
    topk_count,
)

SHAPES_2NN = ((784, 200), (200,), (200, 200), (200,), (200, 10), (10,))
SMALL = ((20, 10), (10,))  # topk with fraction 0.1 keeps 20 and 1
PARTS = {"none": 1, "fp16": 1, "int8": 2, "topk": 2, "sign": 2}  # arrays per tensor
LOSSY = [s for s in SCHEMES if s != "none"]
FP32_EPS = 2.0**-24  # float32 unit roundoff


def layout_of(update: list[np.ndarray]) -> list[tuple[tuple[int, ...], np.dtype]]:
    return [(u.shape, u.dtype) for u in update]


def random_update(
    seed: int, shapes: tuple[tuple[int, ...], ...] = SHAPES_2NN, std: float = 0.01
) -> list[np.ndarray]:
    """Gaussian coordinates with a heavy tail mixed in, as trained updates have."""
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(0, std, s) * rng.choice([1, 1, 1, 30], size=s)).astype(np.float32)
        for s in shapes
    ]


def round_trip(
    update: list[np.ndarray], spec: CodecSpec, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    payload, _ = encode(update, spec, np.random.default_rng(seed))
    return payload, decode(payload, spec, layout_of(update))


def per_tensor(payload: list[np.ndarray], scheme: str) -> list[list[np.ndarray]]:
    n = PARTS[scheme]
    return [payload[i : i + n] for i in range(0, len(payload), n)]


# ------------------------------------------------------------------ bounds per scheme
def assert_within_bound(
    scheme: str, x: np.ndarray, dec: np.ndarray, parts: list[np.ndarray]
) -> None:
    """The bound the module's docstring states for ``scheme``, on one tensor."""
    assert dec.shape == x.shape and dec.dtype == np.float32
    assert np.isfinite(dec).all()
    err = np.abs(x.astype(np.float64) - dec)
    if scheme == "none":
        np.testing.assert_array_equal(dec, x)
    elif scheme == "fp16":  # half an ulp: relative 2^-11, absolute 2^-25 (subnormal)
        assert (err <= np.maximum(2.0**-11 * np.abs(x), 2.0**-25)).all()
    elif scheme == "int8":  # |x - dec| < s, plus float32 rounding of q * s (q <= 127)
        s = float(parts[1][0])
        assert s == pytest.approx(np.abs(x).max() / 127, rel=FP32_EPS * 4)
        assert (err <= s * (1 + 128 * FP32_EPS)).all()
    elif scheme == "topk":
        sent = np.zeros(x.size, dtype=bool)
        sent[parts[0]] = True
        flat_x, flat_err = x.ravel(), err.ravel()
        assert sent.sum() == topk_count(x.size, 0.01)
        assert (flat_err[sent] == 0).all()
        if (~sent).any():
            assert np.abs(flat_x[~sent]).max() <= np.abs(flat_x[sent]).min()
        delta = sent.sum() / x.size
        assert (err**2).sum() <= (1 - delta) * (x.astype(np.float64) ** 2).sum() + 1e-30
    elif scheme == "sign":  # ||x - dec||^2 = ||x||^2 - ||x||_1^2 / d, dec = +-s
        s = float(parts[1][0])
        assert set(np.unique(np.abs(dec))) <= {np.float32(s)}
        assert (np.where(x < 0, -1, 1) * dec >= 0).all()  # 0 is sent as +
        x64 = x.astype(np.float64)
        identity = (x64**2).sum() - np.abs(x64).sum() ** 2 / x.size
        assert (err**2).sum() == pytest.approx(identity, rel=1e-5, abs=1e-12)
    else:
        raise AssertionError(scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(
    "update",
    [
        pytest.param(random_update(1), id="2nn"),
        pytest.param([np.zeros(s, np.float32) for s in SHAPES_2NN], id="zeros"),
        pytest.param([np.array([-0.37], np.float32)], id="size-1"),
        pytest.param(
            [np.float32(10.0) ** np.arange(-9, 5, 0.5, dtype=np.float32)],
            id="1e-9..1e4",
        ),
        pytest.param([np.array([FP16_MAX, -FP16_MAX, 1.0], np.float32)], id="fp16-max"),
        pytest.param([np.array([0, 1.5, -2, 0, 3, 0], np.float32)], id="some-zeros"),
    ],
)
def test_round_trip_within_bound(scheme: str, update: list[np.ndarray]) -> None:
    spec = CodecSpec(scheme, error_feedback=False)
    payload, decoded = round_trip(update, spec)
    assert len(decoded) == len(update)
    for x, dec, parts in zip(update, decoded, per_tensor(payload, scheme), strict=True):
        assert_within_bound(scheme, x, dec, parts)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_decode_returns_the_layout_dtype(scheme: str) -> None:
    """Updates travel as float32; decode hands back what the layout asks for."""
    update = random_update(3, shapes=SMALL)
    spec = CodecSpec(scheme, topk_fraction=0.1)
    payload, decoded = round_trip(update, spec)
    wide = decode(payload, spec, [(u.shape, np.float64) for u in update])
    for d32, d64 in zip(decoded, wide, strict=True):
        assert d64.dtype == np.float64
        np.testing.assert_array_equal(d64, d32)


def test_topk_keeps_the_fraction_at_least_one() -> None:
    update = random_update(2)
    payload, _ = round_trip(update, CodecSpec("topk", topk_fraction=0.01))
    kept = [len(parts[0]) for parts in per_tensor(payload, "topk")]
    assert kept == [1568, 2, 400, 2, 20, 1]


def test_all_zeros_decode_to_zeros() -> None:
    update = [np.zeros(s, np.float32) for s in SHAPES_2NN]
    for scheme in SCHEMES:
        _, decoded = round_trip(update, CodecSpec(scheme, error_feedback=False))
        assert all((d == 0).all() for d in decoded), scheme


def test_fp16_refuses_values_beyond_its_range() -> None:
    update = [np.array([1.0, 7e4], np.float32)]
    with pytest.raises(ValueError, match=r"tensor 0: .*float16"):
        encode(update, CodecSpec("fp16"), np.random.default_rng(0))


@pytest.mark.parametrize("scheme", LOSSY)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_lossy_schemes_refuse_non_finite_updates(scheme: str, bad: float) -> None:
    update = [np.array([1.0, bad], np.float32)]
    with pytest.raises(ValueError, match="NaN or Inf"):
        encode(update, CodecSpec(scheme), np.random.default_rng(0))


# ----------------------------------------------------------------------- unbiasedness
def test_int8_stochastic_rounding_is_unbiased() -> None:
    """Mean of N decodes within z * s / (2 sqrt N) of x: Var[dec_i] <= s^2 / 4, and z
    makes a false failure over all d coordinates less likely than 1e-6 (Bonferroni);
    deterministic floor or nearest rounding is off by up to s/2, far outside."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, 200).astype(np.float32)
    x[:3] = [np.abs(x).max(), 0.0, -0.5 * np.abs(x).max() / 127]  # edge: peak, 0, s/2
    spec, draws = CodecSpec("int8"), 3000
    total = np.zeros(x.size, np.float64)
    for _ in range(draws):
        payload, _ = encode([x], spec, rng)
        total += decode(payload, spec, layout_of([x]))[0]
    s = np.abs(x).max() / 127
    z = NormalDist().inv_cdf(1 - 1e-6 / (2 * x.size))
    assert np.abs(total / draws - x).max() <= z * s / (2 * math.sqrt(draws))


# -------------------------------------------------------------------------- the bytes
def test_compression_ratios_on_the_2nn() -> None:
    update = random_update(4)
    d = sum(u.size for u in update)
    dense = 4 * d
    expected = {
        "none": dense,
        "fp16": 2 * d,
        "int8": d + 4 * len(update),  # one float32 scale per tensor
        "topk": 8 * sum(topk_count(u.size, 0.01) for u in update),  # uint32 + float32
        "sign": sum(math.ceil(u.size / 8) for u in update) + 4 * len(update),
    }
    ratio = {}
    for scheme in SCHEMES:
        payload, _ = round_trip(update, CodecSpec(scheme, topk_fraction=0.01))
        assert payload_nbytes(payload) == expected[scheme], scheme
        ratio[scheme] = dense / payload_nbytes(payload)
    assert ratio["none"] == 1.0
    assert ratio["fp16"] == 2.0
    assert 3.99 < ratio["int8"] < 4.0
    assert ratio["topk"] >= 20  # 49.98: 1993 indices and values of 199,210
    assert 31.9 < ratio["sign"] < 32.0


# --------------------------------------------------------------------- error feedback
@pytest.mark.parametrize("scheme", LOSSY)
def test_residual_carries_what_was_not_sent(scheme: str) -> None:
    """dec(enc(Δ + e)) + e' == Δ + e, to the rounding of one float32 subtraction."""
    update = random_update(5)
    residual = [0.3 * u for u in random_update(6)]
    spec = CodecSpec(scheme, error_feedback=True)
    payload, new_residual = encode(update, spec, np.random.default_rng(0), residual)
    decoded = decode(payload, spec, layout_of(update))
    assert new_residual is not None
    for u, e, dec, e_new in zip(update, residual, decoded, new_residual, strict=True):
        y = u + e
        assert e_new.dtype == np.float32 and e_new.shape == u.shape
        slack = np.spacing(np.maximum(np.abs(y), np.abs(dec)))
        assert (np.abs(dec + e_new - y) <= slack).all()
        if scheme == "topk":  # unsent coordinates move to e' whole
            np.testing.assert_array_equal(dec + e_new, y)


def run_rounds(
    x: np.ndarray, spec: CodecSpec, rounds: int
) -> tuple[np.ndarray, list[float], list[float]]:
    """Encode the same Δ = x for ``rounds`` rounds, feeding the residual back.

    Returns the decoded sum, ||e_t|| per round and the realized δ_t of each y_t."""
    rng = np.random.default_rng(7)
    residual, total = None, np.zeros(x.shape, np.float64)
    norms, deltas = [], []
    for _ in range(rounds):
        y = x + (0 if residual is None else residual[0])
        payload, residual = encode([x], spec, rng, residual)
        dec = decode(payload, spec, layout_of([x]))[0]
        total += dec
        y64, err = y.astype(np.float64), (y - dec).astype(np.float64)
        deltas.append(1 - (err**2).sum() / (y64**2).sum())  # ||y - C(y)||^2 / ||y||^2
        if residual is not None:
            norms.append(float(np.linalg.norm(residual[0])))
    return total, norms, deltas


def test_topk_error_feedback_follows_the_true_sum() -> None:
    """Σ dec_t = R Δ - e_R, and ||e_R|| <= q/(1 - q) ||Δ||, q = sqrt(1 - m/d): the
    mean decoded update converges to Δ like 1/R; without feedback it stays off."""
    x = random_update(8, shapes=((50, 40),), std=1.0)[0]
    norm = float(np.linalg.norm(x))
    rounds, spec = 200, CodecSpec("topk", topk_fraction=0.1)
    q = math.sqrt(1 - topk_count(x.size, 0.1) / x.size)
    bound = q / (1 - q) * norm

    total, norms, _ = run_rounds(x, spec, rounds)
    assert max(norms) <= bound
    assert np.linalg.norm(total - rounds * x) == pytest.approx(norms[-1], rel=1e-4)
    assert np.linalg.norm(total / rounds - x) <= bound / rounds

    # Without feedback every round sends the same C(Δ): the mean stays ||Δ - C(Δ)|| off.
    no_feedback, _, _ = run_rounds(x, CodecSpec("topk", 0.1, error_feedback=False), 20)
    stuck = np.linalg.norm(no_feedback / 20 - x)
    assert stuck > 0.2 * norm
    assert np.linalg.norm(total / rounds - x) < 0.1 * stuck


def test_sign_error_feedback_follows_the_true_sum() -> None:
    """The same for EF-SignSGD: each step is a δ_t-compressor with the realized
    δ_t = ||y||_1^2 / (d ||y||^2) >= 1/d, so ||e|| <= q/(1 - q) ||Δ|| with the
    largest realized q = sqrt(1 - δ_t); the mean error shrinks as R grows."""
    x = random_update(9, shapes=((50, 40),), std=1.0)[0]
    norm = float(np.linalg.norm(x))
    spec = CodecSpec("sign")
    total, norms, deltas = run_rounds(x, spec, 400)
    q = math.sqrt(1 - min(deltas))
    assert min(deltas) >= 1 / x.size
    assert max(norms) <= q / (1 - q) * norm
    assert np.linalg.norm(total - 400 * x) == pytest.approx(norms[-1], rel=1e-3)
    early, _, _ = run_rounds(x, spec, 25)
    assert np.linalg.norm(total / 400 - x) < 0.5 * np.linalg.norm(early / 25 - x)
    no_feedback, _, _ = run_rounds(x, CodecSpec("sign", error_feedback=False), 25)
    assert np.linalg.norm(total / 400 - x) < 0.2 * np.linalg.norm(no_feedback / 25 - x)


def test_feedback_defaults_and_residual_checks() -> None:
    assert CodecSpec("topk").error_feedback is True
    assert CodecSpec("sign").error_feedback is True
    assert CodecSpec("int8").error_feedback is False
    assert CodecSpec("fp16").error_feedback is False
    assert CodecSpec("topk", error_feedback=False).error_feedback is False
    update, rng = random_update(10), np.random.default_rng(0)
    assert encode(update, CodecSpec("int8"), rng)[1] is None
    with pytest.raises(ValueError, match="error feedback is off"):
        encode(update, CodecSpec("int8"), rng, residual=update)
    with pytest.raises(ValueError, match="residual does not match"):
        encode(update, CodecSpec("topk"), rng, residual=update[:-1])
    with pytest.raises(ValueError, match="residual does not match"):
        encode(update, CodecSpec("topk"), rng, residual=[u.T for u in update])


# ------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_payload(scheme: str) -> None:
    update = random_update(11)
    spec = CodecSpec(scheme)
    first, _ = round_trip(update, spec, seed=123)
    again, _ = round_trip(update, spec, seed=123)
    assert [a.dtype for a in first] == [a.dtype for a in again]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, again, strict=True))
    if scheme == "int8":  # the rng is what drives the rounding
        other, _ = round_trip(update, spec, seed=124)
        assert first[0].tobytes() != other[0].tobytes()


# ------------------------------------------------------------------- corrupt payloads
Mutation = Callable[[list], object]


def replaced(index: int, value: object) -> Mutation:
    return lambda p: [value if i == index else a for i, a in enumerate(p)]


def edited(index: int, edit: Callable[[np.ndarray], None]) -> Mutation:
    def mutate(payload: list) -> list:
        payload = [a.copy() for a in payload]
        edit(payload[index])
        return payload

    return mutate


def setitem(where: object, value: object) -> Callable[[np.ndarray], None]:
    return lambda a: a.__setitem__(where, value)


CORRUPTIONS: list[tuple[str, str, Mutation]] = [
    ("none", "not a list", lambda p: None),
    ("none", "too few arrays", lambda p: p[:-1]),
    ("none", "too many arrays", lambda p: [*p, p[-1]]),
    ("none", "not an ndarray", replaced(1, [0.0] * 10)),
    ("none", "float64", lambda p: [a.astype(np.float64) for a in p]),
    ("none", "big-endian", lambda p: [a.astype(">f4") for a in p]),
    ("none", "wrong shape", lambda p: [p[0].reshape(10, 20), p[1]]),
    ("none", "flattened", lambda p: [p[0].ravel(), p[1]]),
    ("none", "NaN", edited(0, setitem((3, 4), np.nan))),
    ("fp16", "float32 values", lambda p: [a.astype(np.float32) for a in p]),
    ("fp16", "Inf", edited(1, setitem(2, np.inf))),
    ("fp16", "wrong shape", replaced(1, np.zeros(11, np.float16))),
    ("int8", "levels int16", lambda p: [p[0].astype(np.int16), *p[1:]]),
    ("int8", "level -128", edited(0, setitem((0, 0), -128))),
    ("int8", "levels wrong shape", replaced(2, np.zeros(9, np.int8))),
    ("int8", "scale NaN", replaced(1, np.array([np.nan], np.float32))),
    ("int8", "scale Inf", replaced(3, np.array([np.inf], np.float32))),
    ("int8", "scale negative", replaced(1, np.array([-0.1], np.float32))),
    ("int8", "scale float64", replaced(1, np.array([0.1], np.float64))),
    ("int8", "two scales", replaced(1, np.array([0.1, 0.1], np.float32))),
    ("int8", "scale 0-d", replaced(1, np.array(0.1, np.float32))),
    ("int8", "missing scale", lambda p: p[:1] + p[2:]),
    ("topk", "indices int64", lambda p: [p[0].astype(np.int64), *p[1:]]),
    ("topk", "indices int32", lambda p: [p[0].astype(np.int32), *p[1:]]),
    ("topk", "values float64", lambda p: [p[0], p[1].astype(np.float64), *p[2:]]),
    ("topk", "index out of range", edited(0, setitem(-1, 200))),
    ("topk", "index far out", edited(2, setitem(0, 2**32 - 1))),
    ("topk", "duplicate index", edited(0, lambda a: a.__setitem__(1, a[0]))),
    ("topk", "unsorted", edited(0, lambda a: a.__setitem__(slice(None), a[::-1]))),
    ("topk", "value NaN", edited(1, setitem(0, np.nan))),
    ("topk", "too many", lambda p: [p[0][:-1], p[1][:-1], *p[2:]]),
    ("topk", "lengths differ", lambda p: [p[0], p[1][:-1], *p[2:]]),
    ("topk", "dense instead", lambda p: [np.arange(200, dtype=np.uint32), *p[1:]]),
    ("topk", "2-D indices", lambda p: [p[0].reshape(2, 10), *p[1:]]),
    ("sign", "bits int8", lambda p: [p[0].astype(np.int8), *p[1:]]),
    ("sign", "bits too short", lambda p: [p[0], p[1], p[2][:-1], p[3]]),
    ("sign", "bits too long", lambda p: [p[0], p[1], np.append(p[2], 0), p[3]]),
    ("sign", "padding bit set", edited(2, lambda a: a.__setitem__(-1, a[-1] | 1))),
    ("sign", "scale negative", replaced(3, np.array([-1.0], np.float32))),
    ("sign", "scale Inf", replaced(1, np.array([np.inf], np.float32))),
]


@pytest.mark.parametrize(
    ("scheme", "mutate"),
    [pytest.param(s, m, id=f"{s}-{name}") for s, name, m in CORRUPTIONS],
)
def test_corrupt_payload_raises_payload_error(scheme: str, mutate: Mutation) -> None:
    spec = CodecSpec(scheme, topk_fraction=0.1)
    update = random_update(12, shapes=SMALL)
    payload, _ = encode(update, spec, np.random.default_rng(0))
    decode(payload, spec, layout_of(update))  # the untouched payload is fine
    with pytest.raises(PayloadError):
        decode(mutate(payload), spec, layout_of(update))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_random_garbage_never_escapes_as_another_error(scheme: str) -> None:
    """Any array in any slot: either PayloadError or arrays of exactly the layout."""
    spec = CodecSpec(scheme, topk_fraction=0.1)
    update = random_update(13, shapes=SMALL)
    payload, _ = encode(update, spec, np.random.default_rng(0))
    rng = np.random.default_rng(14)
    dtypes = [
        np.float16,
        np.float32,
        np.float64,
        np.int8,
        np.uint8,
        np.int64,
        np.uint32,
    ]
    for _ in range(300):
        slot = rng.integers(len(payload))
        junk = payload[slot].copy().ravel() if rng.random() < 0.5 else None
        if junk is None or junk.size == 0:
            dtype = dtypes[rng.integers(len(dtypes))]
            junk = np.zeros(rng.integers(0, 30), dtype)
        junk = junk.astype(dtypes[rng.integers(len(dtypes))], copy=False)
        if junk.size:  # poke a value: NaN, huge, negative, or a neighbour's
            value = [np.nan, 1e9, -1, 2**31, 0][rng.integers(5)]
            with warnings.catch_warnings():  # NaN or 1e9 cast to an integer type
                warnings.simplefilter("ignore")
                junk[rng.integers(junk.size)] = np.asarray(value).astype(junk.dtype)
        if rng.random() < 0.5 and payload[slot].size == junk.size:
            junk = junk.reshape(payload[slot].shape)
        garbled = [junk if i == slot else a for i, a in enumerate(payload)]
        try:
            decoded = decode(garbled, spec, layout_of(update))
        except PayloadError:
            continue
        for dec, u in zip(decoded, update, strict=True):
            assert dec.shape == u.shape and dec.dtype == u.dtype
            assert np.isfinite(dec).all()


# ------------------------------------------------------------------------ spec checks
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "zip"}, "scheme must be one of"),
        ({"scheme": "FP16"}, "scheme must be one of"),
        ({"scheme": "topk", "topk_fraction": 0.0}, r"fraction must be in \(0, 1\]"),
        ({"scheme": "topk", "topk_fraction": 1.5}, r"fraction must be in \(0, 1\]"),
        ({"scheme": "topk", "topk_fraction": -0.1}, r"fraction must be in \(0, 1\]"),
        ({"scheme": "topk", "topk_fraction": math.nan}, r"fraction must be in"),
        ({"scheme": "topk", "topk_fraction": "0.1"}, "fraction must be a number"),
        ({"scheme": "topk", "topk_fraction": True}, "fraction must be a number"),
        ({"scheme": "int8", "error_feedback": "yes"}, "must be true or false"),
        ({"scheme": "none", "error_feedback": True}, "needs a lossy scheme"),
    ],
)
def test_spec_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CodecSpec(**kwargs)


def test_spec_is_frozen_and_accepts_good_values() -> None:
    spec = CodecSpec("topk", topk_fraction=1)
    assert spec.topk_fraction == 1 and spec.error_feedback is True
    with pytest.raises(AttributeError):
        spec.scheme = "none"  # type: ignore[misc]
