"""Group norm: the public functional API.

Semantics follow ``torch.nn.functional.group_norm(x, num_groups, weight, bias,
eps)``: x has shape (N, C, *spatial) (channel_axis=1) or (N, *spatial, C)
(channel_axis=-1, channels last, used as it is: the data is not transposed).
The C channels form num_groups groups of C / num_groups consecutive channels;
mean and biased variance are per (sample, group) over the group's channels and
all spatial positions; weight and bias are per channel, shape (C,). The
kernels run in C (csrc/groupnorm.c) through bnc._core.

dtypes: float16, float32 and float64, same dtype out; float16 computes in
float32. weight, bias, their gradients and the saved statistics are float64
for float64 x, else float32 (float16 weight/bias are accepted and converted).
Sums accumulate in float64. The saved
statistics have shape (N, num_groups). Non-C-contiguous x or grad_out is
copied to a C-contiguous array before the kernel runs, and the result is then
C-contiguous. Results do not depend on the number of threads, bit for bit.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bnc import _core
from bnc.batchnorm import Grads
from bnc.layernorm import _saved

__all__ = ["GroupNormSaved", "group_norm", "group_norm_forward", "group_norm_backward"]


class GroupNormSaved(NamedTuple):
    """What group_norm_forward saves: arrays of shape (N, num_groups)."""

    mean: np.ndarray
    invstd: np.ndarray


def group_norm_forward(x, num_groups, weight=None, bias=None, *, channel_axis=1, eps=1e-5,
                       out=None, n_threads=None):
    """Group norm forward, returning what the backward needs.

    Parameters
    ----------
    x : array_like, float16/32/64, shape (N, C, *spatial) or (N, *spatial, C), not empty
    num_groups : int dividing C
    weight, bias : array_like of shape (C,), or None (1 and 0); float64 for
        float64 x, else float32
    channel_axis : 1 (channels first) or -1 (channels last)
    eps : float > 0, added to the biased variance inside the square root
    out : ndarray like x, optional; out=x computes in place
    n_threads : int or None

    Returns
    -------
    y : ndarray like x
    saved : GroupNormSaved(mean, invstd), each of shape (N, num_groups)
    """
    y, mean, invstd = _core.group_norm_forward_raw(x, num_groups, weight, bias, channel_axis,
                                                   eps, out, n_threads)
    return y, GroupNormSaved(mean, invstd)


def group_norm(x, num_groups, weight=None, bias=None, *, channel_axis=1, eps=1e-5, out=None,
               n_threads=None):
    """Group norm: y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c], statistics
    per (sample, group). Same results as ``torch.nn.functional.group_norm(x,
    num_groups, weight, bias, eps)`` (for channel_axis=-1: on the channels-first
    transpose). See group_norm_forward for the arguments."""
    return group_norm_forward(x, num_groups, weight, bias, channel_axis=channel_axis, eps=eps,
                              out=out, n_threads=n_threads)[0]


def group_norm_backward(grad_out, x, num_groups, weight, saved, *, channel_axis=1, out=None,
                        n_threads=None):
    """Gradients of group norm with respect to x, weight and bias.

    Parameters
    ----------
    grad_out : array_like like x
    x : array_like, the forward's input
    num_groups : int, as in the forward
    weight : array_like of shape (C,), or None (1)
    saved : GroupNormSaved (or a (mean, invstd) pair) from group_norm_forward
    out : ndarray like x, optional, receives grad_input

    Returns
    -------
    Grads(grad_input, grad_weight, grad_bias); grad_weight and grad_bias have
    shape (C,) and are always computed (as if weight were ones when it is None).
    """
    mean, invstd = _saved(saved, 2, "GroupNormSaved(mean, invstd)")
    dx, dw, db = _core.group_norm_backward_raw(grad_out, x, num_groups, weight, mean, invstd,
                                               channel_axis, out, n_threads)
    return Grads(dx, dw, db)
