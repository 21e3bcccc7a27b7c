"""Folding inference batch norm into the preceding convolution or linear layer.

A batch norm in inference mode is a per-channel affine map,
y = (z - running_mean) * s + bn_bias with s = bn_weight / sqrt(running_var + eps),
so a layer z = W x + b followed by it is the same layer with
W'[o, ...] = W[o, ...] * s[o] and b'[o] = (b[o] - running_mean[o]) * s[o] + bn_bias[o].
This is pure policy on small arrays: NumPy in float64, no C kernel.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
from numpy.typing import ArrayLike

from bnc import _core

__all__ = ["Folded", "fold_batch_norm"]

_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


class Folded(NamedTuple):
    """A layer with batch norm folded in: weight like the layer's, bias (out,)."""

    weight: np.ndarray
    bias: np.ndarray


def _layer_weight(weight) -> np.ndarray:
    w = np.asarray(weight)
    if w.dtype.newbyteorder("=") not in _FLOATS:
        raise TypeError(f"weight must have dtype float16, float32 or float64, got {w.dtype}")
    if w.ndim < 2:
        raise ValueError("weight must have at least 2 dimensions (a linear layer's (out, in) "
                         f"or a convolution's), got shape {w.shape}")
    if w.size == 0:
        raise ValueError(f"weight must not be empty, got shape {w.shape}")
    return w


def _per_channel(v, name: str, n_out: int, axis: int) -> Optional[np.ndarray]:
    """A per-output-channel input as a new float64 (n_out,) array (None stays None)."""
    if v is None:
        return None
    if isinstance(v, np.ndarray):
        if v.dtype.newbyteorder("=") not in _FLOATS:
            raise TypeError(f"{name} must have dtype float16, float32 or float64, "
                            f"got {v.dtype}")
    else:
        v = np.asarray(v)
        if v.dtype.kind not in "fiu" or (v.dtype.kind == "f" and v.dtype.itemsize > 8):
            raise TypeError(f"{name} must hold real numbers, got dtype {v.dtype}")
    if v.shape != (n_out,):
        raise ValueError(f"{name} must have shape ({n_out},), one value per output channel "
                         f"(axis {axis} of weight), got {v.shape}")
    return np.array(v, dtype=np.float64)


def fold_batch_norm(weight: ArrayLike, bias: Optional[ArrayLike], running_mean: ArrayLike,
                    running_var: ArrayLike, bn_weight: Optional[ArrayLike] = None,
                    bn_bias: Optional[ArrayLike] = None, *, eps: float = 1e-5,
                    out_channel_axis: int = 0) -> Folded:
    """Fold an inference-mode batch norm into the layer before it.

    A convolution or linear layer (weight, bias) followed by
    ``batch_norm(..., training=False)`` with (running_mean, running_var, eps,
    bn_weight, bn_bias) computes the same as the single layer returned here::

        s = bn_weight / sqrt(running_var + eps)
        weight'[o, ...] = weight[o, ...] * s[o]
        bias'[o] = (bias[o] - running_mean[o]) * s[o] + bn_bias[o]

    with ``o`` indexing `out_channel_axis` of `weight`.

    Parameters
    ----------
    weight : array_like, float16/32/64, ndim >= 2, not empty
        The layer's weight: a convolution's of any dimensionality, OIHW-like
        (``out_channel_axis=0``, PyTorch, ONNX) or HWIO-like
        (``out_channel_axis=-1``, TensorFlow/Keras/JAX), or a linear layer's
        ``(out, in)`` (axis 0, PyTorch) or ``(in, out)`` (axis -1, Keras/JAX).
        A PyTorch transposed convolution ``(in, out, kH, kW)`` with groups=1
        uses axis 1. Grouped and depthwise weights fold like any other, along
        their out-channel axis.
    bias : array_like (out,) or None
        The layer's bias; None (a layer without bias) is zeros.
    running_mean, running_var : array_like (out,)
        The batch norm's running statistics. running_var must be >= 0.
    bn_weight, bn_bias : array_like (out,) or None
        The batch norm's affine parameters (gamma, beta); None means 1 and 0
        (``affine=False``).
    eps : float > 0, finite
        As given to batch norm (default 1e-5, as everywhere in bnc).
    out_channel_axis : int
        The axis of `weight` that holds the output channels; negative counts
        from the end.

    Returns
    -------
    Folded(weight, bias), both new arrays of `weight`'s dtype (native byte
    order): weight with `weight`'s shape and the memory layout of
    ``np.empty_like(weight)``, bias of shape (out,). The inputs are never
    modified.

    Notes
    -----
    Everything is computed in float64 from the inputs converted to float64
    (exactly: per-channel inputs are float16/32/64 arrays of any of the three,
    independent of `weight`'s, or sequences of real numbers), and each result
    is rounded once from its float64 value to `weight`'s dtype; float64 weights are thus ``weight * s`` rounded
    once. A value beyond the range of that dtype (float16 overflows above
    65504) becomes +-Inf, silently.

    NaN and Inf in weight, bias, running_mean, bn_weight and bn_bias propagate
    as IEEE arithmetic gives them, without warnings, so the folded layer
    computes what the unfolded pair computes: a NaN in weight makes that entry
    NaN, a NaN in a channel's statistics or affine parameters makes that
    channel's weights and/or bias NaN. running_var = +Inf gives s = 0 (the
    channel outputs bn_bias, as batch norm does for finite inputs).
    running_var that is negative or NaN is a ValueError: it is no variance,
    and it would silently give NaN weights.

    Raises
    ------
    TypeError
        weight not float16/32/64; a per-channel input of another dtype;
        running_mean or running_var None; eps not a real number;
        out_channel_axis not an integer.
    ValueError
        weight with fewer than 2 dimensions or empty; a per-channel input not of
        shape (out,); running_var negative or NaN; eps not finite and > 0.
    numpy.exceptions.AxisError
        out_channel_axis out of range (a ValueError and an IndexError).

    Examples
    --------
    A linear layer followed by batch norm, then the folded layer:

    >>> import numpy as np, bnc
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((4, 3)).astype(np.float32)
    >>> W = rng.standard_normal((5, 3)).astype(np.float32)        # (out, in)
    >>> b = rng.standard_normal(5).astype(np.float32)
    >>> rm, rv, gamma, beta = (rng.uniform(0.5, 2.0, 5).astype(np.float32)
    ...                        for _ in range(4))
    >>> y = bnc.batch_norm(x @ W.T + b, gamma, beta, rm, rv)       # inference
    >>> Wf, bf = bnc.fold_batch_norm(W, b, rm, rv, gamma, beta)
    >>> Wf.dtype, bf.shape
    (dtype('float32'), (5,))
    >>> bool(np.allclose(x @ Wf.T + bf, y, rtol=1e-5, atol=1e-5))
    True

    A convolution without bias, HWIO weights (TensorFlow's layout):

    >>> w = rng.standard_normal((3, 3, 16, 32)).astype(np.float32)
    >>> folded = bnc.fold_batch_norm(w, None, np.zeros(32), np.ones(32),
    ...                              out_channel_axis=-1)
    >>> folded.weight.shape, folded.bias.shape
    ((3, 3, 16, 32), (32,))
    """
    w = _layer_weight(weight)
    axis = _core.axis_index(out_channel_axis, w.ndim, "out_channel_axis")
    n_out = w.shape[axis]
    b = _per_channel(bias, "bias", n_out, axis)
    rm = _per_channel(running_mean, "running_mean", n_out, axis)
    rv = _per_channel(running_var, "running_var", n_out, axis)
    gamma = _per_channel(bn_weight, "bn_weight", n_out, axis)
    beta = _per_channel(bn_bias, "bn_bias", n_out, axis)
    if rm is None:
        raise TypeError("running_mean is required (an array of shape (out,))")
    if rv is None:
        raise TypeError("running_var is required (an array of shape (out,))")
    e = _core.check_eps(eps)
    # None means what the layers do without them: no bias, gamma = 1, beta = 0
    b = np.zeros(n_out) if b is None else b
    gamma = np.ones(n_out) if gamma is None else gamma
    beta = np.zeros(n_out) if beta is None else beta
    bad = ~(rv >= 0.0)
    if bad.any():
        c = int(np.argmax(bad))
        raise ValueError(f"running_var must be >= 0 (and not NaN), got {float(rv[c])!r} for "
                         f"channel {c}")

    dt = w.dtype.newbyteorder("=")
    with np.errstate(all="ignore"):  # NaN/Inf propagate silently, as in the kernels
        s = gamma / np.sqrt(rv + e)
        shape = [1] * w.ndim
        shape[axis] = n_out
        w_out = np.empty_like(w, dtype=dt)
        np.multiply(w, s.reshape(shape), out=w_out, dtype=np.float64, casting="unsafe")
        b_out = ((b - rm) * s + beta).astype(dt)
    return Folded(w_out, b_out)
