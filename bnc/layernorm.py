"""Layer norm and RMS norm: the public functional API.

Semantics follow torch.nn.functional.layer_norm and rms_norm, with the
normalized shape given as `axis`: the first normalized axis (ONNX
LayerNormalization's convention); the axes from `axis` to the last form each
normalized "row" of D elements. weight and bias have the normalized shape
x.shape[axis:]. The kernels run in C (csrc/layernorm.c) through bnc._core.

dtypes: float16, float32 and float64, same dtype out; float16 computes in
float32. weight, bias, their gradients and the saved statistics are float64
for float64 x, else float32 (float16 weight/bias are accepted and converted).
Row sums accumulate in float64. Statistics have the leading shape
x.shape[:axis] (PyTorch and ONNX keep the normalized axes with size 1).
Non-C-contiguous x or grad_out is copied to a C-contiguous array before the
kernel runs. Results do not depend on the number of threads, bit for bit.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from bnc import _core
from bnc.batchnorm import Grads

__all__ = [
    "LayerNormSaved", "RMSNormSaved", "layer_norm", "layer_norm_forward",
    "layer_norm_backward", "rms_norm", "rms_norm_forward", "rms_norm_backward",
]


class LayerNormSaved(NamedTuple):
    """What layer_norm_forward saves: per-row arrays of shape x.shape[:axis]."""

    mean: np.ndarray
    invstd: np.ndarray


class RMSNormSaved(NamedTuple):
    """What rms_norm_forward saves: 1/sqrt(mean(x^2) + eps), shape x.shape[:axis]."""

    invrms: np.ndarray


def layer_norm_forward(x, weight=None, bias=None, *, axis=-1, eps=1e-5, out=None,
                       n_threads=None):
    """Layer norm forward, returning what the backward needs.

    Parameters
    ----------
    x : array_like, float16/32/64, at least 1-D, not empty
    weight, bias : array_like of shape x.shape[axis:], or None (1 and 0);
        float64 for float64 x, else float32
    axis : int, the first normalized axis (-1: the last axis only)
    eps : float > 0, added to the biased variance inside the square root
    out : ndarray like x, optional; out=x computes in place
    n_threads : int or None

    Returns
    -------
    y : ndarray like x
    saved : LayerNormSaved(mean, invstd), each of shape x.shape[:axis],
        float64 for float64 x else float32 (PyTorch keeps the normalized axes with size 1; reshape with
        ``mean.reshape(x.shape[:axis] + (1,) * (x.ndim - axis))`` if needed)
    """
    y, mean, invstd = _core.layer_norm_forward_raw(x, weight, bias, axis, eps, out,
                                                   n_threads, False)
    return y, LayerNormSaved(mean, invstd)


def layer_norm(x, weight=None, bias=None, *, axis=-1, eps=1e-5, out=None, n_threads=None):
    """Layer norm: y = (x - mean) / sqrt(var + eps) * weight + bias over x.shape[axis:].

    Same results as ``torch.nn.functional.layer_norm(x, x.shape[axis:], weight,
    bias, eps)``. See layer_norm_forward for the arguments.
    """
    # the kernel directly: no saved statistics to wrap
    return _core.layer_norm_forward_raw(x, weight, bias, axis, eps, out, n_threads, False)[0]


def layer_norm_backward(grad_out, x, weight, saved, *, axis=-1, out=None, n_threads=None):
    """Gradients of layer norm with respect to x, weight and bias.

    Parameters
    ----------
    grad_out : array_like like x
    x : array_like, the forward's input
    weight : array_like of shape x.shape[axis:], or None (1)
    saved : LayerNormSaved (or a (mean, invstd) pair) from layer_norm_forward
    out : ndarray like x, optional, receives grad_input

    Returns
    -------
    Grads(grad_input, grad_weight, grad_bias); grad_weight and grad_bias have
    shape x.shape[axis:] and are always computed (as if weight were ones when
    it is None).
    """
    mean, invstd = _saved(saved, 2, "LayerNormSaved(mean, invstd)")
    dx, dw, db = _core.layer_norm_backward_raw(grad_out, x, weight, mean, invstd, axis,
                                               out, n_threads, False)
    return Grads(dx, dw, db)


def rms_norm_forward(x, weight=None, *, axis=-1, eps=None, out=None, n_threads=None):
    """RMS norm forward: y = x / sqrt(mean(x^2) + eps) * weight over x.shape[axis:].

    eps=None uses the machine epsilon of the computing dtype, as
    torch.nn.functional.rms_norm does: np.finfo(float32).eps for float16 and
    float32 x, np.finfo(float64).eps for float64. Returns (y,
    RMSNormSaved(invrms)), invrms of shape x.shape[:axis] (float64 for float64
    x, else float32). Other arguments as layer_norm_forward.
    """
    y, _, invrms = _core.layer_norm_forward_raw(x, weight, None, axis, eps, out,
                                                n_threads, True)
    return y, RMSNormSaved(invrms)


def rms_norm(x, weight=None, *, axis=-1, eps=None, out=None, n_threads=None):
    """RMS norm; same results as ``torch.nn.functional.rms_norm(x, x.shape[axis:],
    weight, eps)``. See rms_norm_forward."""
    return _core.layer_norm_forward_raw(x, weight, None, axis, eps, out, n_threads, True)[0]


def rms_norm_backward(grad_out, x, weight, saved, *, axis=-1, out=None, n_threads=None):
    """Gradients of RMS norm: Grads(grad_input, grad_weight, None).

    saved is the RMSNormSaved (or a 1-sequence (invrms,)) from rms_norm_forward.
    grad_weight has shape x.shape[axis:] and is always computed; grad_bias is
    None (RMS norm has no bias).
    """
    (invrms,) = _saved(saved, 1, "RMSNormSaved(invrms)")
    dx, dw, _ = _core.layer_norm_backward_raw(grad_out, x, weight, None, invrms, axis,
                                              out, n_threads, True)
    return Grads(dx, dw, None)


def _saved(saved, n, what) -> tuple:
    try:
        items = tuple(saved)
    except TypeError:
        raise TypeError(f"saved must be a {what} from the forward, got "
                        f"{type(saved).__name__}") from None
    if len(items) != n:
        raise ValueError(f"saved must be a {what} from the forward ({n} arrays), got "
                         f"{len(items)}")
    return items
