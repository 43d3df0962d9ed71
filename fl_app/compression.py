"""Update codecs: what a client sends in place of its float32 update, and back.

In cross-device FL the uplink is the scarce resource (Konečný et al., "Federated
Learning: Strategies for Improving Communication Efficiency", 2016), so a client may
send its update Δ = w_k - w_t in a smaller code. A payload is itself a list of
ndarrays (what Flower's NumPyClient sends); ``decode`` turns it back into the update,
given the layout the server expects. Pure NumPy: a deployed client starts a fresh
process per message, so this module imports nothing heavy.

Each scheme codes every tensor on its own (d coordinates, x the tensor):

* ``none``: the float32 tensor itself. Lossless.
* ``fp16``: float16 (round to nearest). |x - dec| <= max(2^-11 |x|, 2^-25): half
  an ulp, relative in the normal range, absolute among subnormals. A tensor with
  |x| > 65504 (float16's largest finite value) is refused rather than sent as inf;
  no update that large passes the server's norm check anyway.
* ``int8``: levels q in [-127, 127] and a float32 scale s = max|x| / 127; x / s is
  rounded up or down at random with the probabilities that make E[dec] = x
  (stochastic rounding, Gupta et al., ICML 2015). |x - dec| < s, and
  Var[dec_i] = s² p(1 - p) <= s²/4 with p the fraction of x_i / s.
* ``topk``: the m = max(1, round(k d)) largest |x_i| (ties: lowest index), as
  strictly increasing uint32 flat indices and float32 values. Sent coordinates are
  exact, every unsent |x_i| is <= every sent one, so
  ||x - dec||² <= (1 - m/d) ||x||² (Stich et al., "Sparsified SGD with Memory",
  NeurIPS 2018).
* ``sign``: the scaled sign (s = ||x||_1 / d) · sign(x) of EF-SignSGD (Karimireddy
  et al., "Error Feedback Fixes SignSGD and other Gradient Compression Schemes",
  ICML 2019): one bit per coordinate (np.packbits; 0 counts as +) and a float32 s.
  ||x - dec||² = ||x||² - ||x||_1² / d exactly: a δ-compressor with
  δ = ||x||_1² / (d ||x||²) in [1/d, 1]. Chosen over QSGD because at one bit per
  coordinate (about 32x) it is the dense end of the trade-off that int8 (4x,
  unbiased) and topk (sparse) leave open; it is biased and needs error feedback.

Error feedback (Stich et al. 2018; Karimireddy et al. 2019), for any lossy scheme and
on by default for ``topk`` and ``sign``: the client codes y = Δ + e, where e is what
earlier rounds left unsent, and keeps e' = y - dec(enc(y)) for its next round. What
is decoded over rounds then telescopes to the sum of the updates minus the last
residual; for a δ-compressor ||e|| <= q/(1 - q) · max||Δ|| with q = sqrt(1 - δ).
The residual is plain float32 ndarrays the caller keeps in the node's state.

``decode`` is strict: a payload with the wrong number of arrays, a wrong dtype or
shape, an index out of range, duplicated or out of order, a non-finite value, a
negative scale or a bit or level no encoder emits raises ``PayloadError``; it never
returns an array of another shape, nor a non-finite one.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import DTypeLike

SCHEMES = ("none", "fp16", "int8", "topk", "sign")
FEEDBACK_BY_DEFAULT = ("topk", "sign")  # biased codes: without it they drift
INT8_LEVELS = 127
FP16_MAX = float(np.finfo(np.float16).max)

Shape = tuple[int, ...]
Payload = list[np.ndarray]


class PayloadError(ValueError):
    """A payload that does not decode to the expected update (the server: "codec")."""


@dataclass(frozen=True)
class CodecSpec:
    """How updates are coded in a run; client and server must use the same one.

    ``error_feedback`` None means the scheme's default (on for ``topk`` and
    ``sign``); after construction it is always a bool.
    """

    scheme: str = "none"
    topk_fraction: float = 0.01
    error_feedback: bool | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(
                f"codec scheme must be one of {SCHEMES}, got {self.scheme!r}"
            )
        fraction = self.topk_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
            raise ValueError(f"topk fraction must be a number, got {fraction!r}")
        if not 0 < fraction <= 1:  # NaN fails too
            raise ValueError(f"topk fraction must be in (0, 1], got {fraction}")
        if self.error_feedback is None:
            default = self.scheme in FEEDBACK_BY_DEFAULT
            object.__setattr__(self, "error_feedback", default)
        elif not isinstance(self.error_feedback, bool):
            raise ValueError(
                f"error feedback must be true or false, got {self.error_feedback!r}"
            )
        if self.error_feedback and self.scheme == "none":
            raise ValueError(
                "error feedback needs a lossy scheme; 'none' loses nothing"
            )


def topk_count(size: int, fraction: float) -> int:
    """m, the coordinates ``topk`` keeps of a tensor: round(k d), at least one."""
    return min(size, max(1, round(fraction * size)))


def payload_length(spec: CodecSpec, num_tensors: int) -> int:
    """How many arrays code ``num_tensors`` tensors (what follows is not payload)."""
    return _CODECS[spec.scheme].parts * num_tensors


def payload_nbytes(payload: Sequence[np.ndarray]) -> int:
    """The payload's array bytes (Flower's serialization adds a small header each)."""
    return sum(int(part.nbytes) for part in payload)


def encode(
    update: Sequence[np.ndarray],
    spec: CodecSpec,
    rng: np.random.Generator,
    residual: Sequence[np.ndarray] | None = None,
) -> tuple[Payload, list[np.ndarray] | None]:
    """(payload, new residual) for ``update``; the residual is None without feedback.

    Updates travel as float32 (``update`` is cast). ``rng`` drives int8's stochastic
    rounding; seed it from (seed, round, partition) so a run repeats. ``residual``
    None means zeros (a client's first round); store the one returned. Raises
    ValueError for what a scheme cannot carry (NaN or Inf; |x| > 65504 in fp16).
    """
    arrays = [np.asarray(u, dtype=np.float32) for u in update]
    if spec.error_feedback:
        arrays = _plus_residual(arrays, residual)
    elif residual is not None:
        raise ValueError("a residual was given but error feedback is off")
    codec = _CODECS[spec.scheme]
    payload: Payload = []
    for index, x in enumerate(arrays):
        if spec.scheme != "none" and not np.isfinite(x).all():
            raise ValueError(f"update tensor {index} holds NaN or Inf")
        try:
            payload += codec.encode(x, spec, rng)
        except ValueError as error:
            raise ValueError(f"update tensor {index}: {error}") from None
    if not spec.error_feedback:
        return payload, None
    decoded = decode(payload, spec, [(x.shape, np.float32) for x in arrays])
    return payload, [x - d for x, d in zip(arrays, decoded, strict=True)]


def decode(
    payload: Sequence[np.ndarray],
    spec: CodecSpec,
    layout: Sequence[tuple[Shape, DTypeLike]],
) -> list[np.ndarray]:
    """The update a payload codes: one finite array per (shape, dtype) of ``layout``.

    Raises ``PayloadError`` naming the first thing wrong with the payload.
    """
    codec = _CODECS[spec.scheme]
    if not isinstance(payload, list | tuple):
        raise PayloadError(f"expected a list of arrays, got {type(payload).__name__}")
    expected = codec.parts * len(layout)
    if len(payload) != expected:
        raise PayloadError(
            f"expected {expected} arrays ({codec.parts} per tensor for "
            f"{spec.scheme!r}), got {len(payload)}"
        )
    update = []
    for index, (shape, dtype) in enumerate(layout):
        parts = list(payload[index * codec.parts : (index + 1) * codec.parts])
        try:
            x = codec.decode(parts, tuple(shape), spec)
        except PayloadError as error:
            raise PayloadError(f"tensor {index}: {error}") from None
        update.append(x.astype(dtype, copy=False))
    return update


def _plus_residual(
    arrays: list[np.ndarray], residual: Sequence[np.ndarray] | None
) -> list[np.ndarray]:
    """Δ + e, after checking e has the update's layout (a stale state must not fit)."""
    if residual is None:
        return arrays
    if len(residual) != len(arrays) or any(
        np.shape(e) != x.shape for e, x in zip(residual, arrays, strict=False)
    ):
        raise ValueError("the residual does not match the update's layout")
    return [
        x + np.asarray(e, dtype=np.float32)
        for x, e in zip(arrays, residual, strict=True)
    ]


# --------------------------------------------------------------------------- schemes
# A scheme codes one float32 tensor into ``parts`` arrays and back. Its decoder gets
# exactly ``parts`` objects from the wire and trusts nothing about them.


def _encode_none(x: np.ndarray, spec: CodecSpec, rng: np.random.Generator) -> Payload:
    return [x]


def _decode_none(parts: list[object], shape: Shape, spec: CodecSpec) -> np.ndarray:
    (values,) = parts
    return _finite(_expect(values, "values", np.float32, shape), "values")


def _encode_fp16(x: np.ndarray, spec: CodecSpec, rng: np.random.Generator) -> Payload:
    peak = float(np.abs(x).max(initial=0.0))
    if peak > FP16_MAX:
        raise ValueError(
            f"|value| {peak:.6g} exceeds float16's largest finite value {FP16_MAX:g}; "
            "refused rather than sent as inf"
        )
    return [x.astype(np.float16)]


def _decode_fp16(parts: list[object], shape: Shape, spec: CodecSpec) -> np.ndarray:
    (values,) = parts
    values = _finite(_expect(values, "values", np.float16, shape), "values")
    return values.astype(np.float32)


def _encode_int8(x: np.ndarray, spec: CodecSpec, rng: np.random.Generator) -> Payload:
    peak = np.abs(x).max(initial=np.float32(0))
    scale = np.float32(peak / INT8_LEVELS)
    if peak > 0 and scale == 0:  # peak / 127 underflows: use the smallest step
        scale = np.nextafter(np.float32(0), np.float32(1))
    # Clipping only absorbs the rounding of s (max|x| / s may land a hair above 127).
    y = np.clip(x / np.float64(scale), -INT8_LEVELS, INT8_LEVELS) if scale else 0 * x
    low = np.floor(y)
    levels = low + (rng.random(x.shape) < y - low)  # up with probability frac(y)
    return [levels.astype(np.int8), np.array([scale], dtype=np.float32)]


def _decode_int8(parts: list[object], shape: Shape, spec: CodecSpec) -> np.ndarray:
    levels, scale = parts
    levels = _expect(levels, "levels", np.int8, shape)
    if (levels < -INT8_LEVELS).any():
        raise PayloadError(f"a level is outside [-{INT8_LEVELS}, {INT8_LEVELS}]")
    return levels.astype(np.float32) * _scale(scale)


def _encode_topk(x: np.ndarray, spec: CodecSpec, rng: np.random.Generator) -> Payload:
    flat = x.ravel()
    m = topk_count(flat.size, spec.topk_fraction)
    kept = np.sort(np.argsort(-np.abs(flat), kind="stable")[:m])
    return [kept.astype(np.uint32), flat[kept]]


def _decode_topk(parts: list[object], shape: Shape, spec: CodecSpec) -> np.ndarray:
    indices, values = parts
    size = math.prod(shape)
    m = topk_count(size, spec.topk_fraction)
    indices = _expect(indices, "indices", np.uint32, (m,))
    values = _finite(_expect(values, "values", np.float32, (m,)), "values")
    if (np.diff(indices.astype(np.int64)) <= 0).any():
        raise PayloadError(
            "indices are not strictly increasing (duplicated or unsorted)"
        )
    if m and indices[-1] >= size:
        raise PayloadError(f"index {indices[-1]} is out of range for {size} values")
    dense = np.zeros(size, dtype=np.float32)
    dense[indices] = values
    return dense.reshape(shape)


def _encode_sign(x: np.ndarray, spec: CodecSpec, rng: np.random.Generator) -> Payload:
    scale = np.abs(x).mean(dtype=np.float64) if x.size else 0.0  # ||x||_1 / d
    return [np.packbits(x.ravel() < 0), np.array([scale], dtype=np.float32)]


def _decode_sign(parts: list[object], shape: Shape, spec: CodecSpec) -> np.ndarray:
    bits, scale = parts
    size = math.prod(shape)
    bits = _expect(bits, "sign bits", np.uint8, ((size + 7) // 8,))
    negative = np.unpackbits(bits)
    if negative[size:].any():
        raise PayloadError("padding bits after the last sign are set")
    signs = 1 - 2 * negative[:size].astype(np.float32)
    return (signs * _scale(scale)).reshape(shape)


def _expect(array: object, what: str, dtype: DTypeLike, shape: Shape) -> np.ndarray:
    """``array`` if it is an ndarray of this dtype and shape, else PayloadError."""
    if not isinstance(array, np.ndarray):
        raise PayloadError(f"{what}: expected an ndarray, got {type(array).__name__}")
    if array.dtype != np.dtype(dtype):
        raise PayloadError(f"{what}: expected {np.dtype(dtype)}, got {array.dtype}")
    if array.shape != shape:
        raise PayloadError(f"{what}: expected shape {shape}, got {array.shape}")
    return array


def _finite(array: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise PayloadError(f"{what} hold NaN or Inf")
    return array


def _scale(array: object) -> np.float32:
    """A tensor's scale: one finite, non-negative float32."""
    scale = _expect(array, "scale", np.float32, (1,))[0]
    if not (np.isfinite(scale) and scale >= 0):
        raise PayloadError(f"scale {scale} is not a finite number >= 0")
    return scale


class _Codec(NamedTuple):
    parts: int  # payload arrays per tensor
    encode: Callable[[np.ndarray, CodecSpec, np.random.Generator], Payload]
    decode: Callable[[list[object], Shape, CodecSpec], np.ndarray]


_CODECS = {
    "none": _Codec(1, _encode_none, _decode_none),
    "fp16": _Codec(1, _encode_fp16, _decode_fp16),
    "int8": _Codec(2, _encode_int8, _decode_int8),
    "topk": _Codec(2, _encode_topk, _decode_topk),
    "sign": _Codec(2, _encode_sign, _decode_sign),
}
