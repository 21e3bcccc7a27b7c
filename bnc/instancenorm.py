"""Instance norm: the public functional API.

Semantics follow ``torch.nn.functional.instance_norm(x, running_mean,
running_var, weight, bias, use_input_stats, momentum, eps)``: x has shape
(N, C, *spatial) (channel_axis=1) or (N, *spatial, C) (channel_axis=-1,
channels last, used as it is: the data is not transposed). With
use_input_stats=True each (sample, channel) is normalized with its own mean
and biased variance over the spatial positions; weight and bias are per
channel, shape (C,). Instance norm is group norm with one channel per group
and runs on the group norm kernels (csrc/tmpl/groupnorm_body.h).

Running statistics (optional, as in PyTorch) are updated in place after the
kernel succeeded with the batch average of the per-instance means and of the
per-instance *unbiased* variances (HW / (HW - 1) times the biased ones):
``rm = (1-m)*rm + m*mean_n(mean)``, ``rv = (1-m)*rv + m*mean_n(var_unbiased)``.
momentum=None is a cumulative average driven by num_batches_tracked, as in
bnc.batch_norm (PyTorch's functional instance_norm has no such mode; its
InstanceNorm modules turn momentum=None into 0). use_input_stats=False
normalizes with the running statistics instead (batch norm's inference kernel).

Training (use_input_stats=True) with one spatial element per instance raises
ValueError, as PyTorch does: the variance of one value is 0 and the unbiased
one undefined. dtypes: float16/32/64, float16 computed in float32; the saved
statistics, weight, bias and their gradients are float64 for float64 x, else
float32. Results do not depend on the number of threads, bit for bit.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bnc import _core
from bnc.batchnorm import (_MOMENTUM_NOT_GIVEN, Grads, _apply_running, _check_running,
                           _momentum, batch_norm_forward)

__all__ = ["InstanceNormSaved", "instance_norm", "instance_norm_forward",
           "instance_norm_backward"]


class InstanceNormSaved(NamedTuple):
    """What instance_norm_forward saves: arrays of shape (N, C) holding the mean
    that was subtracted, invstd = 1 / sqrt(var + eps), and var (the biased
    per-instance variance, or the given var repeated over n)."""

    mean: np.ndarray
    invstd: np.ndarray
    var: np.ndarray


def _spatial_check(x, HW):
    if HW < 2:
        raise ValueError("Expected more than 1 spatial element when training, got input "
                         f"size {x.shape}")


def instance_norm_forward(x, weight=None, bias=None, *, mean=None, var=None, eps=1e-5,
                          channel_axis=1, out=None, n_threads=None):
    """Instance norm forward, returning what the backward needs.

    Parameters
    ----------
    x : array_like, float16/32/64, shape (N, C, *spatial) or (N, *spatial, C), not empty
    weight, bias : array_like of shape (C,), or None (1 and 0)
    mean, var : array_like of shape (C,), or None
        Both None: each (n, c) is normalized with its own statistics (the
        spatial size must then be at least 2). Both given: every instance is
        normalized with them (PyTorch's use_input_stats=False).
    eps : float > 0, added to the variance inside the square root
    channel_axis : 1 (channels first) or -1 (channels last)
    out : ndarray like x, optional; out=x computes in place
    n_threads : int or None

    Returns
    -------
    y : ndarray like x
    saved : InstanceNormSaved(mean, invstd, var), each of shape (N, C)
    """
    xa, N, C, HW = _core.instance_norm_dims(x, channel_axis)
    if (mean is None) != (var is None):
        raise ValueError("mean and var must be given together (or neither)")
    if mean is None:
        _spatial_check(xa, HW)
        y, m, invstd, v = _core.instance_norm_forward_raw(xa, weight, bias, channel_axis,
                                                          eps, out, n_threads)
        return y, InstanceNormSaved(m, invstd, v)
    y, s = batch_norm_forward(xa, weight, bias, mean=mean, var=var, eps=eps,
                              channel_axis=channel_axis, out=out, n_threads=n_threads)
    rows = [np.tile(a, (N, 1)) for a in (s.mean, s.invstd, s.var)]
    return y, InstanceNormSaved(*rows)


def instance_norm_backward(grad_out, x, weight, saved, *, use_input_stats=True,
                           channel_axis=1, out=None, n_threads=None):
    """Gradients of instance norm with respect to x, weight and bias.

    Parameters
    ----------
    grad_out : array_like like x
    x : array_like, the forward's input
    weight : array_like of shape (C,), or None (1)
    saved : InstanceNormSaved (or a (mean, invstd, ...) sequence) from
        instance_norm_forward, arrays of shape (N, C)
    use_input_stats : bool
        True: the statistics were computed from x. False: they were constants
        (the forward was given mean and var): dx = dy * weight * invstd.
    out : ndarray like x, optional, receives grad_input

    Returns
    -------
    Grads(grad_input, grad_weight, grad_bias); grad_weight and grad_bias have
    shape (C,) and are always computed (as if weight were ones when it is None).
    """
    try:
        mean, invstd = saved[0], saved[1]
    except (TypeError, IndexError, KeyError):
        raise TypeError("saved must be an InstanceNormSaved (mean, invstd, var) from "
                        "instance_norm_forward") from None
    dx, dw, db = _core.instance_norm_backward_raw(grad_out, x, weight, mean, invstd,
                                                  bool(use_input_stats), channel_axis, out,
                                                  n_threads)
    return Grads(dx, dw, db)


def instance_norm(x, weight=None, bias=None, running_mean=None, running_var=None, *,
                  use_input_stats=True, momentum=_MOMENTUM_NOT_GIVEN, eps=1e-5,
                  channel_axis=1, num_batches_tracked=None, out=None, n_threads=None):
    """Instance normalization, with the results of
    ``torch.nn.functional.instance_norm`` (for channel_axis=-1: on the
    channels-first transpose).

    use_input_stats=True normalizes each (sample, channel) with its own mean
    and biased variance and, when running statistics (arrays of shape (C,),
    float64 for float64 x else float32) are given, updates them in place after
    the kernel succeeded with the batch averages of the per-instance means and
    unbiased variances, weighted by momentum (None: cumulative average, which
    needs num_batches_tracked, a 0-d integer array incremented in place).
    use_input_stats=False normalizes with the running statistics, which are
    then required and left unchanged. Nothing is written when an error is
    raised.

    Returns y, an ndarray like x (channels-last input gives channels-last output).
    """
    have = (running_mean is not None, running_var is not None)
    if have[0] != have[1]:
        raise ValueError("running_mean and running_var must be given together")
    xa, N, C, HW = _core.instance_norm_dims(x, channel_axis)
    if have[0]:
        m, corr = _check_running(running_mean, running_var, momentum, None, 1,
                                 num_batches_tracked, C, xa.dtype, writable=use_input_stats)
    else:
        m = _momentum(momentum, None)
        if num_batches_tracked is not None:
            raise ValueError("num_batches_tracked needs running_mean and running_var")
    if not use_input_stats:
        if not have[0]:
            raise ValueError("use_input_stats=False needs running_mean and running_var")
        return instance_norm_forward(xa, weight, bias, mean=running_mean, var=running_var,
                                     eps=eps, channel_axis=channel_axis, out=out,
                                     n_threads=n_threads)[0]
    _spatial_check(xa, HW)
    if not have[0] and m is None:
        raise ValueError("momentum=None needs running statistics and num_batches_tracked")
    y, saved = instance_norm_forward(xa, weight, bias, eps=eps, channel_axis=channel_axis,
                                     out=out, n_threads=n_threads)
    if have[0]:
        _apply_running(running_mean, running_var, saved.mean.mean(axis=0, dtype=np.float64),
                       saved.var.mean(axis=0, dtype=np.float64), HW, m, corr,
                       num_batches_tracked)
    return y
