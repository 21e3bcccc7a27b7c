"""Batch renormalization (Ioffe, 2017): the public functional API.

In training, batch renorm normalizes with the batch statistics like batch
norm, then corrects the result towards what the running statistics would
give: with the batch mean ``mu_B`` and biased variance ``var_B``,
``sigma_B = sqrt(var_B + eps)`` and ``sigma = sqrt(running_var + eps)``::

    r = clip(sigma_B / sigma, 1/rmax, rmax)
    d = clip((mu_B - running_mean) / sigma, -dmax, dmax)
    y = weight * ((x - mu_B) / sigma_B * r + d) + bias

r and d are constants for the backward (no gradient flows through them).
rmax=1, dmax=0 gives r=1, d=0: batch norm. Inference is batch norm with the
running statistics. The C kernel computes r and d with each channel's
normalizing coefficients (``weight*r/sigma_B`` and ``weight*d + bias``) inside
batch norm's training sweep, so a forward is still one pass over memory.

Running statistics
------------------
One pair ``running_mean``/``running_var`` serves both purposes: r and d are
taken against it, and inference uses it. `batch_renorm` with training=True
computes r and d from the values the arrays hold on entry, then updates them
in place exactly as `bnc.batch_norm` does (``momentum`` or ``decay``, the
unbiased batch variance with ``correction=1``, ``num_batches_tracked``).
`batch_renorm_forward` only reads them.

Keras (``BatchNormalization(renorm=True, renorm_clipping={'rmin', 'rmax',
'dmax'}, renorm_momentum=...)``) keeps two sets instead: ``renorm_mean`` and
``renorm_stddev``, moving averages of the batch mean and of
``sqrt(var_B + epsilon)`` with ``renorm_momentum``, against which r and d are
taken (``r = sigma_B / max(renorm_stddev, sqrt(epsilon))``,
``d = (mu_B - renorm_mean) / that``, also with the pre-update values), and
``moving_mean``/``moving_variance``, updated with ``momentum`` from the batch
mean and biased variance and used for inference. The differences:

- Keras' momentum is the weight of the old value: ``decay=`` here.
- Keras averages the standard deviation, bnc the variance, so r differs
  after the first step even with equal momenta.
- Keras clips r to ``[rmin, rmax]`` with a free ``rmin`` (default 0) and
  its defaults are unclipped (rmax=dmax=inf); bnc uses the paper's
  ``[1/rmax, rmax]`` and defaults to rmax=1, dmax=0 (batch norm). Pass
  ``rmax=inf``/``dmax=inf`` for no clipping.
- Keras updates its inference statistics with the biased variance
  (``correction=0`` here) and defaults to epsilon=1e-3.

To reproduce Keras' two sets, call `batch_renorm_forward` with the renorm
pair and update each pair yourself with `bnc.update_running_stats`
(``decay=renorm_momentum`` and ``decay=momentum, correction=0``); only the
variance-versus-stddev averaging then differs.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bnc import _core
from bnc.batchnorm import (
    _MOMENTUM_NOT_GIVEN,
    Grads,
    _apply_running,
    _check_count,
    _check_running,
)

__all__ = ["BatchRenormSaved", "batch_renorm", "batch_renorm_forward",
           "batch_renorm_backward"]


class BatchRenormSaved(NamedTuple):
    """What the renorm forward saves for the backward: per-channel arrays (C,).

    mean, invstd, var are the batch statistics (invstd = 1/sigma_B), r and d
    the corrections that were applied."""

    mean: np.ndarray
    invstd: np.ndarray
    var: np.ndarray
    r: np.ndarray
    d: np.ndarray


def batch_renorm_forward(x, weight, bias, running_mean, running_var, *, rmax=1.0,
                         dmax=0.0, eps=1e-5, channel_axis=1, out=None, n_threads=None):
    """Batch renorm training forward, returning what the backward needs.

    Parameters
    ----------
    x : array_like, float16/32/64, shape (..., C, ...) with C at `channel_axis`
    weight, bias : array_like (C,) or None (1 and 0)
    running_mean, running_var : array_like (C,)
        The statistics r and d are taken against; only read.
    rmax : float >= 1, r is clipped to [1/rmax, rmax] (inf: not clipped)
    dmax : float >= 0, d is clipped to [-dmax, dmax] (inf: not clipped)
    eps : float > 0
    channel_axis : int
    out : ndarray like x, optional
    n_threads : int or None

    Returns
    -------
    y : ndarray like x (layout of np.empty_like(x))
    saved : BatchRenormSaved(mean, invstd, var, r, d), float64 for float64 x
        else float32
    """
    y, m, invstd, v, r, d = _core.batch_renorm_forward_raw(
        x, weight, bias, running_mean, running_var, rmax, dmax, eps, channel_axis, out,
        n_threads)
    return y, BatchRenormSaved(m, invstd, v, r, d)


def batch_renorm_backward(grad_out, x, weight, saved, *, channel_axis=1, out=None,
                          n_threads=None):
    """Gradients of batch renorm (training) with respect to x, weight and bias.

    r and d are constants, so with xhat = (x - mean) * invstd:
    grad_input is batch norm's backward through the batch statistics with
    weight * r, grad_weight = r * sum(dy * xhat) + d * sum(dy) and
    grad_bias = sum(dy) (sums over every axis but the channel axis).

    Parameters
    ----------
    grad_out : array_like like x
    x : array_like, the forward's input
    weight : array_like (C,) or None (1)
    saved : BatchRenormSaved from `batch_renorm_forward`
    out : ndarray like x, optional, receives grad_input

    Returns
    -------
    Grads(grad_input, grad_weight, grad_bias); grad_weight and grad_bias are
    always computed (as if weight were ones when it is None).
    """
    if not (isinstance(saved, tuple) and len(saved) == 5):
        raise TypeError("saved must be a BatchRenormSaved (mean, invstd, var, r, d) from "
                        "batch_renorm_forward")
    xa, C = _core.check_input(x, channel_axis, False)
    sdt = _core.stat_dtype(xa.dtype)
    weight = _core.check_param(weight, "weight", C, xa.dtype)
    r = _core.check_param(saved[3], "saved.r", C, xa.dtype)
    d = _core.check_param(saved[4], "saved.d", C, xa.dtype)
    r64 = r.astype(np.float64)
    w_r = r64 if weight is None else weight.astype(np.float64) * r64
    dx, sdyx, sdy, _ = _core.batch_norm_backward_raw(
        grad_out, xa, w_r.astype(sdt), saved[0], saved[1], channel_axis, True, out,
        n_threads)
    with np.errstate(all="ignore"):  # NaN/Inf propagate
        dw = (r64 * sdyx.astype(np.float64) + d.astype(np.float64) * sdy.astype(np.float64))
    return Grads(dx, dw.astype(sdt), sdy)


def batch_renorm(x, weight, bias, running_mean, running_var, *, training=False, rmax=1.0,
                 dmax=0.0, momentum=_MOMENTUM_NOT_GIVEN, decay=None, eps=1e-5,
                 channel_axis=1, correction=1, num_batches_tracked=None, out=None,
                 n_threads=None):
    """Batch renormalization (Ioffe, 2017) with running statistics.

    training=True normalizes with the batch statistics, corrected by r and d
    against the running statistics (see the module docstring), then updates
    running_mean and running_var in place as `bnc.batch_norm` does (momentum
    or decay, correction, num_batches_tracked), r and d having been computed
    from their old values. training=False is batch norm inference with the
    running statistics. rmax=1, dmax=0 (the defaults) is batch norm.

    Parameters
    ----------
    x : array_like, float16/32/64, shape (..., C, ...)
    weight, bias : array_like (C,) or None (1 and 0)
    running_mean, running_var : ndarray (C,), float64 for float64 x else float32
        Required; updated in place when training.
    rmax : float >= 1; dmax : float >= 0 (inf: no clipping)
    momentum, decay, correction, num_batches_tracked : see bnc.batch_norm

    Returns
    -------
    y : ndarray like x (NHWC input gives NHWC output)
    """
    if running_mean is None or running_var is None:
        raise ValueError("batch_renorm needs running_mean and running_var")
    rmax = _core.check_rmax(rmax)
    dmax = _core.check_dmax(dmax)
    xa, C = _core.check_input(x, channel_axis, training)
    m, corr = _check_running(running_mean, running_var, momentum, decay, correction,
                             num_batches_tracked, C, xa.dtype, writable=training)
    if not training:
        y, _, _, _ = _core.batch_norm_forward_raw(
            xa, weight, bias, running_mean, running_var, eps, channel_axis, out,
            n_threads, False)
        return y
    _check_count(xa.size // C, corr)
    y, mean, _, var, _, _ = _core.batch_renorm_forward_raw(
        xa, weight, bias, running_mean, running_var, rmax, dmax, eps, channel_axis, out,
        n_threads)
    _apply_running(running_mean, running_var, mean, var, xa.size // C, m, corr,
                   num_batches_tracked)
    return y
