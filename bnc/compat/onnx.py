"""ONNX normalization operators as functions on NumPy arrays.

Each function is one operator: its inputs are positional and carry the ONNX
input names, its attributes are keyword-only with the ONNX names and
defaults of the latest opset, and it returns the operator's outputs (one
array, or a tuple when the operator has several). ``run_node`` runs a node
given its op_type, inputs and attribute dict, older opsets' attributes
included. Differences from the ONNX specification are listed in
docs/guide/compat.md; in short:

- BatchNormalization (opset 15): ``training_mode=1`` returns (Y,
  running_mean, running_var) as new arrays: ONNX's momentum weighs the old
  running value (bnc's ``decay``) and its running variance is updated with
  the biased batch variance (bnc's ``correction=0``).
- LayerNormalization (opset 17) always returns (Y, Mean, InvStdDev), the
  statistics with the normalized axes kept with size 1, in the stash_type's
  dtype (1: float32, 10: float16, 11: float64). bnc accumulates in float64
  whatever stash_type says.
- GroupNormalization: opset 21 takes scale and bias per channel (shape (C,)),
  opset 18 per group (shape (num_groups,)). Both are accepted and told apart
  by their length: a per-group value applies to each of its C / num_groups
  channels (when num_groups == C the two readings are the same).
- Scale and B of LayerNormalization and RMSNormalization may be anything
  broadcastable to the normalized shape, as in ONNX.
"""
from __future__ import annotations

import numpy as np

from bnc.batchnorm import batch_norm as _batch_norm
from bnc.groupnorm import group_norm as _group_norm
from bnc.instancenorm import instance_norm as _instance_norm
from bnc.layernorm import layer_norm_forward as _layer_norm_forward
from bnc.layernorm import rms_norm as _rms_norm

__all__ = ["batch_normalization", "instance_normalization", "layer_normalization",
           "group_normalization", "rms_normalization", "OPS", "run_node"]

# TensorProto data types a stash_type may name, as NumPy dtypes
_STASH = {1: np.float32, 10: np.float16, 11: np.float64}


def _stat_dtype(x):
    return np.float64 if x.dtype == np.float64 else np.float32


def batch_normalization(X, scale, B, input_mean, input_var, *, epsilon=1e-5, momentum=0.9,
                        training_mode=0):
    """ONNX BatchNormalization (opset 15), channels on axis 1.

    training_mode=0: Y, normalized with input_mean and input_var.
    training_mode=1: (Y, running_mean, running_var): Y normalized with the
    batch statistics, running_mean = input_mean * momentum + mean * (1 -
    momentum), running_var likewise with the biased batch variance; new
    arrays of input_mean's and input_var's dtypes (the inputs are unchanged).
    """
    X = np.asarray(X)
    if training_mode not in (0, 1, False, True):
        raise ValueError(f"training_mode must be 0 or 1, got {training_mode!r}")
    if not training_mode:
        return _batch_norm(X, scale, B, input_mean, input_var, training=False, eps=epsilon)
    sdt = _stat_dtype(X)
    input_mean, input_var = np.asarray(input_mean), np.asarray(input_var)
    running_mean = np.array(input_mean, dtype=sdt)
    running_var = np.array(input_var, dtype=sdt)
    Y = _batch_norm(X, scale, B, running_mean, running_var, training=True,
                    decay=momentum, correction=0, eps=epsilon)
    return (Y, running_mean.astype(_float_dtype(input_mean, sdt), copy=False),
            running_var.astype(_float_dtype(input_var, sdt), copy=False))


def _float_dtype(a, default):
    return a.dtype if a.dtype.kind == "f" else default


def instance_normalization(input, scale, B, *, epsilon=1e-5):
    """ONNX InstanceNormalization: statistics per (sample, channel), channels on axis 1."""
    return _instance_norm(input, scale, B, eps=epsilon)


def _normalized(X, axis):
    X = np.asarray(X)
    if not -X.ndim <= axis < X.ndim:
        raise ValueError(f"axis must be in [{-X.ndim}, {X.ndim - 1}] for a {X.ndim}-D X, "
                         f"got {axis}")
    return X, axis % X.ndim


def _broadcast(v, shape, name):
    if v is None:
        return None
    try:
        return np.ascontiguousarray(np.broadcast_to(np.asarray(v), shape))
    except ValueError:
        raise ValueError(f"{name} must broadcast to the normalized shape {shape}, got "
                         f"shape {np.shape(v)}") from None


def _stash(stash_type):
    try:
        return _STASH[int(stash_type)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"stash_type must be one of {sorted(_STASH)} (float32, float16, "
                         f"float64), got {stash_type!r}") from None


def layer_normalization(X, Scale, B=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    """ONNX LayerNormalization (opset 17): normalizes over X.shape[axis:].

    Returns (Y, Mean, InvStdDev); Mean and InvStdDev have X's shape with the
    normalized axes of size 1, in the stash_type's dtype.
    """
    sdt = _stash(stash_type)
    X, a = _normalized(X, axis)
    norm = X.shape[a:]
    Y, saved = _layer_norm_forward(X, _broadcast(Scale, norm, "Scale"),
                                   _broadcast(B, norm, "B"), axis=a, eps=epsilon)
    kept = X.shape[:a] + (1,) * (X.ndim - a)
    return (Y, saved.mean.reshape(kept).astype(sdt, copy=False),
            saved.invstd.reshape(kept).astype(sdt, copy=False))


def group_normalization(X, scale, bias, *, epsilon=1e-5, num_groups, stash_type=1):
    """ONNX GroupNormalization, channels on axis 1: scale and bias per channel
    (opset 21, shape (C,)) or per group (opset 18, shape (num_groups,))."""
    _stash(stash_type)
    X = np.asarray(X)
    if X.ndim < 2:
        raise ValueError(f"X must have at least 2 dimensions (N, C, ...), got shape {X.shape}")
    C = X.shape[1]
    G = int(num_groups)
    if G < 1 or C % G:
        raise ValueError(f"num_groups must divide the {C} channels, got {num_groups}")

    def per_channel(v, name):
        v = np.asarray(v)
        if v.shape == (C,):
            return v
        if v.shape == (G,):
            return np.repeat(v, C // G)
        raise ValueError(f"{name} must have shape ({C},) (per channel, opset 21) or "
                         f"({G},) (per group, opset 18), got {v.shape}")

    return _group_norm(X, G, per_channel(scale, "scale"), per_channel(bias, "bias"),
                       eps=epsilon)


def rms_normalization(X, scale, *, axis=-1, epsilon=1e-5, stash_type=1):
    """ONNX RMSNormalization (opset 23): Y = X / sqrt(mean(X^2) + epsilon) * scale
    over X.shape[axis:]."""
    _stash(stash_type)
    X, a = _normalized(X, axis)
    return _rms_norm(X, _broadcast(scale, X.shape[a:], "scale"), axis=a, eps=epsilon)


OPS = {
    "BatchNormalization": batch_normalization,
    "InstanceNormalization": instance_normalization,
    "LayerNormalization": layer_normalization,
    "GroupNormalization": group_normalization,
    "RMSNormalization": rms_normalization,
}


def run_node(op_type, inputs, attributes=None):
    """Run one ONNX node: ``OPS[op_type](*inputs, **attributes)``, always
    returning a tuple of outputs. Attributes of older opsets are translated:
    BatchNormalization's is_test (opset 6-7: training_mode = 1 - is_test, and
    with is_test=0 only Y is returned, as then), spatial (only 1, the
    per-channel mode, is supported: NotImplementedError otherwise) and
    consumed_inputs (ignored)."""
    try:
        fn = OPS[op_type]
    except KeyError:
        raise NotImplementedError(f"bnc.compat.onnx has no {op_type!r}; it has "
                                  f"{', '.join(OPS)}") from None
    attrs = dict(attributes or {})
    first_only = False
    if op_type == "BatchNormalization":
        attrs.pop("consumed_inputs", None)
        if int(attrs.pop("spatial", 1)) != 1:
            raise NotImplementedError("BatchNormalization with spatial=0 (statistics per "
                                      "activation) is not supported")
        if "is_test" in attrs:
            attrs["training_mode"] = 1 - int(attrs.pop("is_test"))
            first_only = True
    out = fn(*inputs, **attrs)
    out = out if isinstance(out, tuple) else (out,)
    return out[:1] if first_only else out
