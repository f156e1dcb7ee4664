"""Linear resampling along one axis as a small weight matrix, with the weights torch's
``F.interpolate(mode="bilinear", align_corners=False)`` uses, with or without its antialiasing.

Written in NumPy so that preparing a study for the networks and mapping their maps back needs no
torch: a ``predict`` on ONNX Runtime starts without importing it. A 2D resize is two matrix
products, ``rows @ image @ columns.T``; the tests check the result against torch's own.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def linear_weights(in_size: int, out_size: int, antialias: bool) -> np.ndarray:
    """``(out_size, in_size)`` float32 weights: output sample ``i`` is ``weights[i] @ input``.

    Without antialiasing each output sample interpolates its two nearest input samples (pixel centres
    aligned, edges clamped). With it, a triangle filter as wide as the scale averages every input
    sample under it when shrinking (PIL's and torch's antialiased bilinear), and interpolates as
    above when enlarging, its weights renormalised at the edges."""
    scale = in_size / out_size
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    if not antialias:  # in float32, as torch computes it, so that rounding agrees too
        source = np.maximum(np.float32(scale) * (rows.astype(np.float32) + np.float32(0.5)) - np.float32(0.5),
                            np.float32(0.0))
        low = np.minimum(source.astype(np.int64), in_size - 1)
        high = np.minimum(low + 1, in_size - 1)
        fraction = source - low
        np.add.at(weights, (rows, low), 1.0 - fraction)
        np.add.at(weights, (rows, high), fraction)
        return weights.astype(np.float32)
    support = max(scale, 1.0)
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    for row in rows:
        centre = scale * (row + 0.5)
        start = max(int(centre - support + 0.5), 0)
        stop = min(int(centre + support + 0.5), in_size)
        taps = np.arange(start, stop)
        tap = np.clip(1.0 - np.abs((taps - centre + 0.5) * inverse), 0.0, None)
        total = tap.sum()
        weights[row, start:stop] = tap / total if total > 0 else 0.0
    return weights.astype(np.float32)


def _apply_along_last(array: np.ndarray, weights: np.ndarray, block: int = 16) -> np.ndarray:
    """``array @ weights.T`` for banded weights: each block of output samples reads only the input
    samples under its filters, a few times fewer products than the whole matrix when shrinking."""
    out = np.empty((*array.shape[:-1], weights.shape[0]), dtype=np.float32)
    for start in range(0, weights.shape[0], block):
        rows = weights[start: start + block]
        used = np.nonzero(rows.any(axis=0))[0]
        low, high = (used[0], used[-1] + 1) if used.size else (0, 1)
        out[..., start: start + block] = array[..., low:high] @ rows[:, low:high].T
    return out


def resize_stack(stack: np.ndarray, size: tuple[int, int], antialias: bool) -> np.ndarray:
    """Bilinear resize of the last two axes of a float32 ``(..., h, w)`` array to ``size``."""
    height, width = stack.shape[-2:]
    if (height, width) == tuple(size):
        return stack
    across = _apply_along_last(stack, linear_weights(width, size[1], antialias))
    return np.swapaxes(_apply_along_last(np.swapaxes(across, -1, -2), linear_weights(height, size[0], antialias)),
                       -1, -2)


def resize_axis0(array: np.ndarray, length: int, antialias: bool) -> np.ndarray:
    """Resize the first axis of a float32 array to ``length`` (the others unchanged)."""
    if array.shape[0] == length:
        return array
    weights = linear_weights(array.shape[0], length, antialias)
    return (weights @ array.reshape(array.shape[0], -1)).reshape(length, *array.shape[1:])
