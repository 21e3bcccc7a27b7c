"""Batch normalization: the public functional API.

The kernels run in C (see csrc/batchnorm.c) through bnc._core; this module
holds the policy: which statistics to use, the running-statistics update, and
the exact merge of statistics. Semantics follow torch.nn.functional.batch_norm;
`decay=` and `correction=0` give ONNX BatchNormalization's.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from bnc import _core
from bnc._core import batch_norm_stats

__all__ = [
    "BatchNormSaved", "Grads", "ResidualGrads", "batch_norm", "batch_norm_forward",
    "batch_norm_backward", "batch_norm_stats", "combine_stats",
    "update_running_stats", "batch_norm_backward_reduce", "batch_norm_backward_elemt",
]

batch_norm_backward_reduce = _core.batch_norm_backward_reduce
batch_norm_backward_elemt = _core.batch_norm_backward_elemt

# The common calls (C-contiguous arrays of the right dtypes, plain options) are
# taken whole by these; they return None for anything else, and the code below
# then validates (raising as documented) and computes.
_forward_fast = _core.batch_norm_forward_fast
_backward_fast = _core.batch_norm_backward_fast
_batch_norm_fast = _core.batch_norm_fast

_DEFAULT_MOMENTUM = 0.1


class _Default(float):
    """The default momentum: behaves as 0.1 but tells "not given" from 0.1."""

    def __repr__(self) -> str:
        return "0.1"


_MOMENTUM_NOT_GIVEN = _Default(_DEFAULT_MOMENTUM)


class BatchNormSaved(NamedTuple):
    """What the forward saves for the backward: per-channel arrays of shape (C,)."""

    mean: np.ndarray
    invstd: np.ndarray
    var: np.ndarray


class Grads(NamedTuple):
    """Gradients of batch norm: grad_input like x, grad_weight and grad_bias (C,)."""

    grad_input: np.ndarray
    grad_weight: np.ndarray
    grad_bias: np.ndarray


class ResidualGrads(NamedTuple):
    """Gradients of the fused y = act(batch_norm(x) + residual): those of
    batch norm (as in Grads) and grad_residual, like x (the gradient reaching
    the sum, i.e. grad_out masked by the ReLU)."""

    grad_input: np.ndarray
    grad_weight: np.ndarray
    grad_bias: np.ndarray
    grad_residual: np.ndarray


def batch_norm_forward(x, weight=None, bias=None, *, mean=None, var=None, eps=1e-5,
                       channel_axis=1, activation=None, residual=None, out=None,
                       n_threads=None):
    """Batch norm forward, returning what the backward needs.

    Parameters
    ----------
    x : array_like, float16/32/64, shape (..., C, ...) with C at `channel_axis`
    weight, bias : array_like (C,) or None (1 and 0)
    mean, var : array_like (C,) or None
        Both None: normalize with the batch statistics (biased variance), as in
        training. Both given: use them (inference, or a frozen layer).
    eps : float > 0, added to the variance inside the square root
    channel_axis : int
    activation : None or "relu"
        Fused activation: y = relu(bn(x) + residual), ReLU as torch.relu
        (negatives to 0, NaN propagates). The backward reads its mask from y.
    residual : array_like of x's shape, optional
        Added to the normalized x before the activation, in one pass (the
        sum is not rounded before the activation). An ndarray must have x's
        dtype (TypeError: no silent cast); other array_likes are converted to
        it. Any strides and layout; no broadcasting.
    out : ndarray like x, optional
        out=x or out=residual (the very same view) computes in place; any
        other overlap with an input is a ValueError.
    n_threads : int or None

    Returns
    -------
    y : ndarray like x (layout of np.empty_like(x))
    saved : BatchNormSaved(mean, invstd, var), float64 for float64 x else float32
    """
    if activation is None and residual is None:
        done = _forward_fast(x, weight, bias, mean, var, eps, channel_axis, out, n_threads)
        if done is not None:
            return done
    if (mean is None) != (var is None):
        raise ValueError("mean and var must be given together (or neither)")
    training = mean is None
    y, m, invstd, v = _core.batch_norm_forward_raw(
        x, weight, bias, mean, var, eps, channel_axis, out, n_threads, training,
        activation, residual)
    if training:
        return y, BatchNormSaved(m, invstd, v)
    sdt = _core.stat_dtype(y.dtype)
    m = np.asarray(mean, dtype=sdt)
    v = np.asarray(var, dtype=sdt)
    invstd = (1.0 / np.sqrt(v.astype(np.float64) + float(eps))).astype(sdt)
    return y, BatchNormSaved(m.copy(), invstd, v.copy())


def batch_norm_backward(grad_out, x, weight, saved, *, channel_axis=1,
                        use_batch_stats=True, activation=None, y=None, residual=False,
                        out=None, n_threads=None):
    """Gradients of batch norm with respect to x, weight and bias, and of the
    fused y = act(batch_norm(x) + residual).

    Parameters
    ----------
    grad_out : array_like like x
    x : array_like, the forward's input
    weight : array_like (C,) or None (1)
    saved : BatchNormSaved (or a (mean, invstd, ...) sequence) from the forward
    use_batch_stats : bool
        True: the forward normalized with batch statistics, which are functions
        of x (training). False: the statistics were constants (a frozen layer).
    activation : None or "relu"
        The fused forward's activation. With "relu", `y` is required and the
        gradient is masked first: dz = grad_out where y > 0 (or y is NaN),
        else 0, as torch's threshold_backward; the batch norm grads are those
        of dz. No mask is stored by the forward: it is read from y.
    y : array_like like x, the fused forward's output (activation="relu" only)
    residual : bool
        True: the forward added a residual; returns ResidualGrads with
        grad_residual = dz (newly allocated, like x).
    out : ndarray like x, optional, receives grad_input (must not overlap an input)

    Returns
    -------
    Grads(grad_input, grad_weight, grad_bias), or with residual=True
    ResidualGrads(grad_input, grad_weight, grad_bias, grad_residual);
    grad_weight and grad_bias are always computed (as if weight were ones
    when it is None).
    """
    if activation is None and y is None and residual is False:
        done = _backward_fast(grad_out, x, weight, saved, channel_axis, use_batch_stats, out,
                              n_threads)
        if done is not None:
            return done
    if not isinstance(residual, (bool, np.bool_)):
        raise TypeError("residual must be True or False in the backward (whether the "
                        f"forward added one), got {type(residual).__name__}")
    try:
        mean, invstd = saved[0], saved[1]
    except (TypeError, IndexError):
        raise TypeError("saved must be a BatchNormSaved (mean, invstd, var) from "
                        "batch_norm_forward") from None
    dx, dw, db, dres = _core.batch_norm_backward_raw(
        grad_out, x, weight, mean, invstd, channel_axis, bool(use_batch_stats), out,
        n_threads, activation, y, bool(residual))
    if residual:
        return ResidualGrads(dx, dw, db, dres)
    return Grads(dx, dw, db)


def _momentum(momentum, decay) -> Optional[float]:
    """Resolve momentum/decay to the weight of the new batch (None: cumulative)."""
    if decay is not None:
        if momentum is not _MOMENTUM_NOT_GIVEN:
            raise TypeError("give momentum or decay, not both (decay = 1 - momentum)")
        d = _real(decay, "decay")
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay!r}")
        return 1.0 - d
    if momentum is None:
        return None
    m = _real(momentum, "momentum")
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    return m


def _real(v, name) -> float:
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got bool")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}") from None


def _stat_array(a, name, C, xdtype, writable):
    """Check a running-statistics array (written in place when `writable`)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray (updated in place), "
                        f"got {type(a).__name__}")
    if xdtype is not None and a.dtype != _core.stat_dtype(xdtype):
        raise TypeError(f"{name} must have dtype {_core.stat_dtype(xdtype)} for "
                        f"{xdtype} x, got {a.dtype}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got dtype {a.dtype}")
    if C is not None and a.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},), one value per channel, "
                         f"got {a.shape}")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} is read-only")


def _check_running(running_mean, running_var, momentum, decay, correction,
                   num_batches_tracked, C, xdtype, writable=True):
    """Validate a running-statistics update; returns (momentum or None, correction)."""
    m = _momentum(momentum, decay)
    _stat_array(running_mean, "running_mean", C, xdtype, writable)
    _stat_array(running_var, "running_var", C, xdtype, writable)
    if writable and np.shares_memory(running_mean, running_var):
        raise ValueError("running_mean and running_var must not overlap")
    corr = _core.as_int(correction, "correction")
    if corr < 0:
        raise ValueError(f"correction must be >= 0, got {correction!r}")
    if num_batches_tracked is not None:
        t = num_batches_tracked
        if not isinstance(t, np.ndarray) or t.dtype.kind not in "iu":
            raise TypeError("num_batches_tracked must be a 0-d integer numpy array "
                            "(e.g. np.array(0, dtype=np.int64)), updated in place")
        if t.shape != ():
            raise ValueError(f"num_batches_tracked must be 0-d, got shape {t.shape}")
        if writable and not t.flags.writeable:
            raise ValueError("num_batches_tracked is read-only")
    elif m is None:
        raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
    return m, corr


def _check_count(count, corr):
    if count <= corr:
        raise ValueError(f"count ({count}) must be larger than correction ({corr}) "
                         "to update the running variance")


def _apply_running(running_mean, running_var, mean, var, count, m, corr,
                   num_batches_tracked):
    """The update itself; every argument was checked before."""
    if not _core.apply_running_fast(running_mean, running_var, mean, var, count, m, corr,
                                    num_batches_tracked):
        _apply_running_numpy(running_mean, running_var, mean, var, count, m, corr,
                             num_batches_tracked)


def _apply_running_numpy(running_mean, running_var, mean, var, count, m, corr,
                         num_batches_tracked):
    """The update in NumPy, for any arrays; _core's fast paths compute the same
    bits in one loop when the arrays are plain and no step can raise a
    floating-point exception."""
    if num_batches_tracked is not None:
        num_batches_tracked += 1
        if m is None:
            m = 1.0 / float(num_batches_tracked)
    # in the running arrays' precision, as PyTorch does: rm = (1-m)*rm + m*mean
    running_mean *= 1.0 - m
    running_mean += np.multiply(mean, m, dtype=running_mean.dtype, casting="unsafe")
    running_var *= 1.0 - m
    running_var += np.multiply(var, m * count / (count - corr), dtype=running_var.dtype,
                               casting="unsafe")


def update_running_stats(running_mean, running_var, mean, var, count, *,
                         momentum=_MOMENTUM_NOT_GIVEN, decay=None, correction=1,
                         num_batches_tracked=None):
    """Update running statistics in place with a batch's (mean, biased var, count).

    rm = (1-m)*rm + m*mean and rv = (1-m)*rv + m*var*count/(count-correction),
    m = momentum (default 0.1), or 1 - decay, or with momentum=None the
    cumulative factor 1/num_batches_tracked. num_batches_tracked (0-d integer
    array) is incremented in place when given. Nothing is written on error.
    """
    mean = np.asarray(mean)
    var = np.asarray(var)
    for a, name in ((mean, "mean"), (var, "var")):
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if mean.ndim != 1 or var.shape != mean.shape:
        raise ValueError(f"mean and var must have the same shape (C,), got {mean.shape} "
                         f"and {var.shape}")
    m, corr = _check_running(running_mean, running_var, momentum, decay, correction,
                             num_batches_tracked, mean.shape[0], None)
    count = _core.as_int(count, "count")
    _check_count(count, corr)
    _apply_running(running_mean, running_var, mean, var, count, m, corr,
                   num_batches_tracked)


def combine_stats(means, vars, counts):
    """Exact merge of per-group statistics (Chan et al.).

    Parameters
    ----------
    means, vars : array_like (K, C): per group mean and biased variance
    counts : array_like (K,) of integers >= 0

    Returns
    -------
    mean, var : ndarray (C,), float64 if the inputs are float64 else float32
    count : int, the total
    """
    mu = np.asarray(means)
    va = np.asarray(vars)
    n = np.asarray(counts)
    if mu.ndim != 2 or va.shape != mu.shape:
        raise ValueError(f"means and vars must have the same shape (K, C), got "
                         f"{mu.shape} and {va.shape}")
    if n.shape != (mu.shape[0],) or (n.size and n.dtype.kind not in "iu"):
        raise ValueError(f"counts must be {mu.shape[0]} integers, got {n!r}")
    if np.any(n < 0):
        raise ValueError("counts must be >= 0")
    total = int(n.sum())
    if total == 0:
        raise ValueError("combine_stats needs at least one value (all counts are 0)")
    out_dt = np.float64 if np.result_type(mu, va) == np.float64 else np.float32
    keep = n > 0
    w = (n[keep].astype(np.float64) / total)[:, None]
    m64, v64 = mu[keep].astype(np.float64), va[keep].astype(np.float64)
    mean = (w * m64).sum(axis=0)
    var = (w * (v64 + (m64 - mean) ** 2)).sum(axis=0)
    return mean.astype(out_dt), var.astype(out_dt), total


def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, *,
               training=False, momentum=_MOMENTUM_NOT_GIVEN, decay=None, eps=1e-5,
               channel_axis=1, correction=1, num_batches_tracked=None, activation=None,
               residual=None, out=None, n_threads=None):
    """Batch normalization, with the results of torch.nn.functional.batch_norm.

    training=True normalizes with the batch statistics (biased variance) and,
    when running statistics are given, updates them in place after the kernel
    succeeded (see `update_running_stats`). training=False normalizes with the
    running statistics, which are then required.

    activation=None or "relu" and residual= (an array of x's shape) fuse
    y = relu(batch_norm(x) + residual) into the normalizing pass: see
    `batch_norm_forward` for their rules (dtype, layout, in place).

    Returns y, an ndarray like x (NHWC input gives NHWC output).
    """
    if activation is None and residual is None:
        y = _batch_norm_fast(x, weight, bias, running_mean, running_var, training, momentum,
                             decay, eps, channel_axis, correction, num_batches_tracked, out,
                             n_threads)
        if y is not None:
            return y
    have = (running_mean is not None, running_var is not None)
    if have[0] != have[1]:
        raise ValueError("running_mean and running_var must be given together")
    xa, C = _core.check_input(x, channel_axis, training)
    if have[0]:
        m, corr = _check_running(running_mean, running_var, momentum, decay, correction,
                                 num_batches_tracked, C, xa.dtype, writable=training)
        if training:
            _check_count(xa.size // C, corr)
    else:
        m = _momentum(momentum, decay)
        if m is None and training:
            raise ValueError("momentum=None needs running statistics and "
                             "num_batches_tracked")
    if not training:
        if not have[0]:
            raise ValueError("training=False needs running_mean and running_var")
        y, _, _, _ = _core.batch_norm_forward_raw(
            xa, weight, bias, running_mean, running_var, eps, channel_axis, out,
            n_threads, False, activation, residual)
        return y
    y, mean, _, var = _core.batch_norm_forward_raw(
        xa, weight, bias, None, None, eps, channel_axis, out, n_threads, True, activation,
        residual)
    if have[0]:
        count = y.size // mean.shape[0]
        _apply_running(running_mean, running_var, mean, var, count, m, corr,
                       num_batches_tracked)
    return y


_core.register_api(BatchNormSaved, Grads, _MOMENTUM_NOT_GIVEN, _apply_running_numpy)
