"""torch.nn.functional's normalization functions on NumPy arrays.

Same names, parameter names, order, kinds and defaults as PyTorch 2.13.0
(checked by the tests with ``inspect.signature``), same results; the arrays
are NumPy arrays (or anything ``np.asarray`` takes) and the results NumPy
arrays. Differences, all documented in docs/guide/compat.md:

- running_mean / running_var are updated in place, so they must be writable
  NumPy arrays of the statistics dtype (float64 for float64 input, else
  float32), as PyTorch updates its tensors in place.
- errors are bnc's: TypeError / ValueError naming the argument (PyTorch
  raises RuntimeError for most of them).
- no autograd: the gradients are bnc's *_backward functions (see
  docs/guide/embedding.md for wrapping them into torch.autograd).
"""
from __future__ import annotations

import numpy as np

from bnc.batchnorm import batch_norm as _batch_norm
from bnc.groupnorm import group_norm as _group_norm
from bnc.instancenorm import instance_norm as _instance_norm
from bnc.layernorm import layer_norm as _layer_norm
from bnc.layernorm import rms_norm as _rms_norm

__all__ = ["batch_norm", "instance_norm", "layer_norm", "group_norm", "rms_norm"]


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-05):
    """``torch.nn.functional.batch_norm``: channels on axis 1; training=True
    normalizes with the batch statistics and updates the running statistics
    (when given) in place with momentum and the unbiased variance."""
    return _batch_norm(input, weight, bias, running_mean, running_var, training=training,
                       momentum=momentum, eps=eps)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-05):
    """``torch.nn.functional.instance_norm``: statistics per (sample, channel)."""
    return _instance_norm(input, weight, bias, running_mean, running_var,
                          use_input_stats=use_input_stats, momentum=momentum, eps=eps)


def _first_normalized_axis(x, normalized_shape):
    """The axis where normalized_shape (an int or a sequence of ints, the
    trailing dimensions of x) starts; ValueError as PyTorch's check."""
    x = np.asarray(x)
    shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else \
        tuple(normalized_shape)
    k = len(shape)
    if k == 0 or k > x.ndim or tuple(x.shape[x.ndim - k:]) != tuple(int(s) for s in shape):
        raise ValueError(f"normalized_shape: expected input with shape [*, "
                         f"{', '.join(map(str, shape))}], but got input of size "
                         f"{list(x.shape)}")
    return x, x.ndim - k


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-05):
    """``torch.nn.functional.layer_norm``: normalizes over the trailing
    dimensions normalized_shape (weight and bias have that shape)."""
    x, axis = _first_normalized_axis(input, normalized_shape)
    return _layer_norm(x, weight, bias, axis=axis, eps=eps)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-05):
    """``torch.nn.functional.group_norm``: (N, C, *) input, num_groups groups of
    consecutive channels, per-channel weight and bias."""
    return _group_norm(input, num_groups, weight, bias, eps=eps)


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """``torch.nn.functional.rms_norm``; eps=None is the machine epsilon of
    the computing dtype (float32's for float16 and float32 input)."""
    x, axis = _first_normalized_axis(input, normalized_shape)
    return _rms_norm(x, weight, axis=axis, eps=eps)
