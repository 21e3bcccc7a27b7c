"""Plain NumPy float64 twins of the bnc batch norm API.

This module is the oracle the compiled kernels are tested against. It is
written for clarity, not speed: every function converts its inputs to
float64, computes with the textbook formulas and returns float64 arrays.
It allocates freely and validates only what it needs to compute a result.

The functions have the same names and arguments as the public API in
``bnc`` minus ``out=`` and ``n_threads=``.

Notation used in the docstrings: ``C`` is the size of the channel axis, the
*reduced axes* are all the other axes, and ``n`` (``count``) is the number of
elements of ``x`` per channel (the product of the reduced axes' sizes).
"""

from typing import NamedTuple, Optional, Tuple

import numpy as np

__all__ = [
    "BatchNormSaved",
    "BatchRenormSaved",
    "Grads",
    "ResidualGrads",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_forward",
    "batch_norm_stats",
    "batch_renorm",
    "batch_renorm_backward",
    "batch_renorm_forward",
    "combine_stats",
    "update_running_stats",
]


class BatchNormSaved(NamedTuple):
    """Per-channel statistics saved by the forward pass for the backward.

    Attributes
    ----------
    mean : ndarray, shape (C,), float64
        The mean that was subtracted.
    invstd : ndarray, shape (C,), float64
        ``1 / sqrt(var + eps)``.
    var : ndarray, shape (C,), float64
        The variance that was used (biased batch variance in training).
    """

    mean: np.ndarray
    invstd: np.ndarray
    var: np.ndarray


class Grads(NamedTuple):
    """Gradients of a loss with respect to the inputs of batch norm.

    Attributes
    ----------
    grad_input : ndarray, float64, same shape as ``x``
    grad_weight : ndarray, shape (C,), float64
    grad_bias : ndarray, shape (C,), float64
    """

    grad_input: np.ndarray
    grad_weight: np.ndarray
    grad_bias: np.ndarray


class ResidualGrads(NamedTuple):
    """Gradients of the fused ``y = act(batch_norm(x) + residual)``.

    Attributes
    ----------
    grad_input, grad_weight, grad_bias : ndarray, float64
        As in :class:`Grads`, of the gradient reaching batch norm.
    grad_residual : ndarray, float64, same shape as ``x``
        The gradient reaching the sum (``grad_out`` through the activation).
    """

    grad_input: np.ndarray
    grad_weight: np.ndarray
    grad_bias: np.ndarray
    grad_residual: np.ndarray


class BatchRenormSaved(NamedTuple):
    """What the batch renorm forward saves: per-channel arrays, shape (C,).

    Attributes
    ----------
    mean, invstd, var : ndarray, float64
        The batch statistics, as in :class:`BatchNormSaved`
        (``invstd = 1 / sigma_B``).
    r, d : ndarray, float64
        The clipped corrections that were applied.
    """

    mean: np.ndarray
    invstd: np.ndarray
    var: np.ndarray
    r: np.ndarray
    d: np.ndarray


# ---------------------------------------------------------------------------
# helpers


def _as_f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _channel_axis(ndim: int, channel_axis: int) -> int:
    """Return ``channel_axis`` as a non-negative axis index."""
    if not -ndim <= channel_axis < ndim:
        raise ValueError(
            f"channel_axis={channel_axis} is out of bounds for an array "
            f"with {ndim} dimensions"
        )
    return channel_axis % ndim


def _reduced_axes(ndim: int, axis: int) -> Tuple[int, ...]:
    """All axes except the channel axis."""
    return tuple(a for a in range(ndim) if a != axis)


def _per_channel(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Reshape a (C,) vector so that it broadcasts along ``axis``."""
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def _affine(v, C: int, fill: float) -> np.ndarray:
    """A (C,) float64 affine parameter; ``None`` means all ``fill``."""
    if v is None:
        return np.full(C, fill, dtype=np.float64)
    return _as_f64(v).reshape(C)


def _resolve_momentum(momentum, decay):
    """Turn (momentum, decay) into a momentum (None = cumulative average)."""
    if decay is not None:
        # momentum keeps its default when only decay is given. An explicit
        # momentum=0.1 cannot be told apart from the default and is
        # accepted; any other momentum (None included) is a conflict.
        if momentum is None or momentum != 0.1:
            raise TypeError("give either momentum or decay, not both")
        return 1.0 - float(decay)
    return None if momentum is None else float(momentum)


# ---------------------------------------------------------------------------
# statistics


def batch_norm_stats(x, *, channel_axis: int = 1):
    """Per-channel mean and biased variance.

    Two passes: the mean first, then the mean of the squared deviations
    from it.

    Parameters
    ----------
    x : array_like, shape (..., C, ...)
        Input; the channel axis is ``channel_axis``.
    channel_axis : int, default 1
        The kept axis; may be negative.

    Returns
    -------
    mean : ndarray, shape (C,), float64
    var : ndarray, shape (C,), float64
        Biased variance ``mean((x - mean)**2)``.
    count : int
        Number of elements per channel.
    """
    x = _as_f64(x)
    axis = _channel_axis(x.ndim, channel_axis)
    axes = _reduced_axes(x.ndim, axis)
    count = x.size // x.shape[axis] if x.shape[axis] else 0
    if count == 0:
        nan = np.full(x.shape[axis], np.nan)
        return nan, nan.copy(), 0
    mean = x.sum(axis=axes) / count
    dev = x - _per_channel(mean, x.ndim, axis)
    var = (dev * dev).sum(axis=axes) / count
    return mean, var, int(count)


def combine_stats(means, vars, counts):
    """Exact merge of the statistics of K groups of the same channels.

    The groups are disjoint pieces of one batch (e.g. the shards of a
    synchronized batch norm). Groups with a zero count are ignored, whatever
    their mean and variance (NaN included).

    Parameters
    ----------
    means : array_like, shape (K, C)
        Per-group, per-channel means.
    vars : array_like, shape (K, C)
        Per-group, per-channel biased variances.
    counts : array_like of int, shape (K,)
        Elements per channel in each group; zeros allowed.

    Returns
    -------
    mean : ndarray, shape (C,), float64
        ``sum_k n_k m_k / n`` with ``n = sum_k n_k``.
    var : ndarray, shape (C,), float64
        Biased variance of the union,
        ``sum_k n_k (v_k + (m_k - mean)**2) / n``.
    count : int
        ``n``; if it is 0, mean and var are NaN.
    """
    means = _as_f64(means)
    vars = _as_f64(vars)
    counts = np.asarray(counts).reshape(-1)
    keep = counts > 0
    n_k = counts[keep].astype(np.float64)[:, None]
    m_k = means[keep]
    v_k = vars[keep]
    n = int(counts[keep].sum())
    C = means.shape[1]
    if n == 0:
        return np.full(C, np.nan), np.full(C, np.nan), 0
    mean = (n_k * m_k).sum(axis=0) / n
    var = (n_k * (v_k + (m_k - mean) ** 2)).sum(axis=0) / n
    return mean, var, n


def update_running_stats(
    running_mean,
    running_var,
    mean,
    var,
    count,
    *,
    momentum: Optional[float] = 0.1,
    decay: Optional[float] = None,
    correction: int = 1,
    num_batches_tracked=None,
) -> None:
    """Update running statistics in place with one batch's statistics.

    ``rm = (1-m)*rm + m*mean`` and
    ``rv = (1-m)*rv + m*var*count/(count-correction)``.

    Parameters
    ----------
    running_mean, running_var : ndarray, shape (C,)
        Updated in place (computed in float64, stored in their own dtype).
    mean, var : array_like, shape (C,)
        Batch mean and biased batch variance.
    count : int
        Elements per channel in the batch.
    momentum : float or None, default 0.1
        Weight of the new batch. None means a cumulative average with
        factor ``1 / num_batches_tracked`` (after the increment), as
        ``torch.nn.BatchNorm`` does.
    decay : float, optional
        Weight of the old value; ``decay=d`` means ``momentum=1-d``. Giving
        a momentum other than the default together with decay is a
        TypeError (an explicit ``momentum=0.1`` looks like the default).
    correction : int, default 1
        Bessel-style correction of the running variance (1 = unbiased,
        0 = biased).
    num_batches_tracked : 0-d int64 ndarray, optional
        Incremented by 1 in place when given. Required when momentum is
        None.

    Raises
    ------
    TypeError
        momentum and decay both given.
    ValueError
        momentum is None without num_batches_tracked, or
        ``count <= correction``.
    """
    m = _resolve_momentum(momentum, decay)
    if m is None and num_batches_tracked is None:
        raise ValueError("momentum=None needs num_batches_tracked")
    count = int(count)
    if count - correction <= 0:
        raise ValueError(
            f"count={count} must exceed correction={correction} to update "
            "the running variance"
        )
    if num_batches_tracked is not None:
        num_batches_tracked[...] += 1
        if m is None:
            m = 1.0 / float(num_batches_tracked)
    rm = _as_f64(running_mean)
    rv = _as_f64(running_var)
    unbiased = _as_f64(var) * (count / (count - correction))
    new_mean = (1.0 - m) * rm + m * _as_f64(mean)
    new_var = (1.0 - m) * rv + m * unbiased
    running_mean[...] = new_mean
    running_var[...] = new_var


# ---------------------------------------------------------------------------
# forward / backward


def _relu(v: np.ndarray) -> np.ndarray:
    """torch.relu: negatives to 0; NaN and -0.0 stay as they are."""
    return np.where(v < 0, 0.0, v)


def _activation(activation) -> bool:
    """True for "relu", False for None; ValueError otherwise."""
    if activation is None:
        return False
    if isinstance(activation, str) and activation == "relu":
        return True
    raise ValueError(f'activation must be None or "relu", got {activation!r}')


def batch_norm_forward(
    x,
    weight=None,
    bias=None,
    *,
    mean=None,
    var=None,
    eps: float = 1e-5,
    channel_axis: int = 1,
    activation=None,
    residual=None,
):
    """Batch norm forward: ``y = (x - mean) * invstd * weight + bias``,
    then ``y = act(y + residual)`` when fused.

    Parameters
    ----------
    x : array_like, shape (..., C, ...)
    weight, bias : array_like, shape (C,), optional
        Affine parameters; None means ones / zeros.
    mean, var : array_like, shape (C,), optional
        Statistics to normalize with (inference or frozen layer). Give both
        or neither; without them the batch mean and biased batch variance
        of ``x`` are used.
    eps : float, default 1e-5
        Added to the variance: ``invstd = 1 / sqrt(var + eps)``.
    channel_axis : int, default 1
    activation : None or "relu"
        Applied after the residual: ``relu(v) = v if v >= 0 else 0`` (NaN
        propagates), as ``torch.relu``.
    residual : array_like, same shape as ``x``, optional
        Added to the normalized ``x`` before the activation.

    Returns
    -------
    y : ndarray, float64, same shape as ``x``
    saved : BatchNormSaved
        ``(mean, invstd, var)``, each (C,) float64.
    """
    relu = _activation(activation)
    x = _as_f64(x)
    axis = _channel_axis(x.ndim, channel_axis)
    C = x.shape[axis]
    if (mean is None) != (var is None):
        raise ValueError("give both mean and var, or neither")
    if mean is None:
        mean, var, _ = batch_norm_stats(x, channel_axis=axis)
    else:
        mean = _as_f64(mean).reshape(C)
        var = _as_f64(var).reshape(C)
    invstd = 1.0 / np.sqrt(var + eps)
    w = _affine(weight, C, 1.0)
    b = _affine(bias, C, 0.0)

    def bc(v):
        return _per_channel(v, x.ndim, axis)

    y = (x - bc(mean)) * bc(invstd) * bc(w) + bc(b)
    if residual is not None:
        y = y + _as_f64(residual).reshape(x.shape)
    if relu:
        y = _relu(y)
    return y, BatchNormSaved(mean, invstd, var)


def batch_norm_backward(
    grad_out,
    x,
    weight,
    saved: BatchNormSaved,
    *,
    channel_axis: int = 1,
    use_batch_stats: bool = True,
    activation=None,
    y=None,
    residual: bool = False,
):
    """Batch norm backward (and that of the fused forward).

    Fused: with ``activation="relu"`` the gradient first goes through the
    ReLU, whose mask is read from the forward's output ``y``:
    ``dz = grad_out`` where ``y > 0`` or ``y`` is NaN, else 0 (as torch's
    ``threshold_backward``); the batch norm gradients below are those of
    ``dz``, and with ``residual=True`` ``grad_residual = dz``.

    With ``xhat = (x - mean) * invstd`` and ``dy = grad_out``:

    - ``grad_bias = sum(dy)``, ``grad_weight = sum(dy * xhat)`` (sums over
      the reduced axes);
    - ``use_batch_stats=True`` (training: mean and var are functions of x)::

          dx = weight * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))

    - ``use_batch_stats=False`` (frozen: mean and var are constants)::

          dx = dy * weight * invstd

    Parameters
    ----------
    grad_out : array_like, same shape as ``x``
    x : array_like, shape (..., C, ...)
        The forward input.
    weight : array_like, shape (C,), or None
        None means ones.
    saved : BatchNormSaved
        From :func:`batch_norm_forward`; ``mean`` and ``invstd`` are used.
    channel_axis : int, default 1
    use_batch_stats : bool, default True
    activation : None or "relu"
    y : array_like, same shape as ``x``
        The fused forward's output; required with ``activation="relu"``.
    residual : bool, default False
        Return :class:`ResidualGrads` with the residual's gradient.

    Returns
    -------
    Grads
        ``(grad_input, grad_weight, grad_bias)`` in float64; grad_weight and
        grad_bias have shape (C,) and are returned even if weight is None.
        :class:`ResidualGrads` when ``residual`` is True.
    """
    x = _as_f64(x)
    dy = _as_f64(grad_out)
    if _activation(activation):
        if y is None:
            raise ValueError('y is required with activation="relu"')
        yv = _as_f64(y)
        dy = np.where(yv <= 0, 0.0, dy)
    axis = _channel_axis(x.ndim, channel_axis)
    axes = _reduced_axes(x.ndim, axis)
    C = x.shape[axis]
    count = x.size // C if C else 0

    def bc(v):
        return _per_channel(v, x.ndim, axis)

    mean = _as_f64(saved.mean).reshape(C)
    invstd = _as_f64(saved.invstd).reshape(C)
    w = _affine(weight, C, 1.0)
    xhat = (x - bc(mean)) * bc(invstd)

    grad_bias = dy.sum(axis=axes)
    grad_weight = (dy * xhat).sum(axis=axes)
    if use_batch_stats:
        mean_dy = grad_bias / count
        mean_dy_xhat = grad_weight / count
        grad_input = bc(w * invstd) * (dy - bc(mean_dy) - xhat * bc(mean_dy_xhat))
    else:
        grad_input = dy * bc(w * invstd)
    if residual:
        return ResidualGrads(grad_input, grad_weight, grad_bias, dy)
    return Grads(grad_input, grad_weight, grad_bias)


# ---------------------------------------------------------------------------
# the functional op


def batch_norm(
    x,
    weight=None,
    bias=None,
    running_mean=None,
    running_var=None,
    *,
    training: bool = False,
    momentum: Optional[float] = 0.1,
    decay: Optional[float] = None,
    eps: float = 1e-5,
    channel_axis: int = 1,
    correction: int = 1,
    num_batches_tracked=None,
    activation=None,
    residual=None,
):
    """Batch normalization with the semantics of ``torch.nn.functional.batch_norm``;
    fused with ``activation`` and ``residual`` as :func:`batch_norm_forward`.

    Parameters
    ----------
    x : array_like, shape (..., C, ...)
    weight, bias : array_like, shape (C,), optional
        None means ones / zeros.
    running_mean, running_var : ndarray, shape (C,), optional
        Required when ``training=False``. When ``training=True`` and both
        are given they are updated in place with
        :func:`update_running_stats` after the output is computed.
    training : bool, default False
        True: normalize with the batch mean and biased batch variance.
        False: normalize with the running statistics.
    momentum, decay, correction, num_batches_tracked
        See :func:`update_running_stats`; used only when training with
        running statistics (``num_batches_tracked`` is incremented only
        then, like ``torch.nn.BatchNorm``).
    eps : float, default 1e-5
    channel_axis : int, default 1

    Returns
    -------
    y : ndarray, float64, same shape as ``x``

    Raises
    ------
    ValueError
        Training with one value per channel, or ``training=False`` without
        running statistics.
    """
    x = _as_f64(x)
    axis = _channel_axis(x.ndim, channel_axis)
    if training:
        count = x.size // x.shape[axis] if x.shape[axis] else 0
        if count == 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, "
                f"got input size {tuple(x.shape)}"
            )
        y, saved = batch_norm_forward(x, weight, bias, eps=eps, channel_axis=axis,
                                      activation=activation, residual=residual)
        if running_mean is not None and running_var is not None:
            update_running_stats(
                running_mean,
                running_var,
                saved.mean,
                saved.var,
                count,
                momentum=momentum,
                decay=decay,
                correction=correction,
                num_batches_tracked=num_batches_tracked,
            )
        return y
    if running_mean is None or running_var is None:
        raise ValueError(
            "running_mean and running_var are required when training=False"
        )
    y, _ = batch_norm_forward(
        x,
        weight,
        bias,
        mean=running_mean,
        var=running_var,
        eps=eps,
        channel_axis=axis,
        activation=activation,
        residual=residual,
    )
    return y


# ---------------------------------------------------------------------------
# batch renormalization (Ioffe, 2017)


def batch_renorm_forward(
    x,
    weight,
    bias,
    running_mean,
    running_var,
    *,
    rmax: float = 1.0,
    dmax: float = 0.0,
    eps: float = 1e-5,
    channel_axis: int = 1,
):
    """Batch renorm training forward.

    With the batch mean ``mu_B``, biased batch variance ``var_B``,
    ``sigma_B = sqrt(var_B + eps)`` and ``sigma = sqrt(running_var + eps)``::

        r = clip(sigma_B / sigma, 1/rmax, rmax)
        d = clip((mu_B - running_mean) / sigma, -dmax, dmax)
        y = weight * ((x - mu_B) / sigma_B * r + d) + bias

    Parameters
    ----------
    x : array_like, shape (..., C, ...)
    weight, bias : array_like, shape (C,), or None (ones / zeros)
    running_mean, running_var : array_like, shape (C,)
        Only read.
    rmax : float >= 1
    dmax : float >= 0
    eps : float, default 1e-5
    channel_axis : int, default 1

    Returns
    -------
    y : ndarray, float64, same shape as ``x``
    saved : BatchRenormSaved
        ``(mean, invstd, var, r, d)``, each (C,) float64.
    """
    if not rmax >= 1.0:
        raise ValueError(f"rmax must be >= 1, got {rmax!r}")
    if not dmax >= 0.0:
        raise ValueError(f"dmax must be >= 0, got {dmax!r}")
    x = _as_f64(x)
    axis = _channel_axis(x.ndim, channel_axis)
    C = x.shape[axis]
    mean, var, _ = batch_norm_stats(x, channel_axis=axis)
    sigma_b = np.sqrt(var + eps)
    sigma = np.sqrt(_as_f64(running_var).reshape(C) + eps)
    r = np.clip(sigma_b / sigma, 1.0 / rmax, rmax)
    d = np.clip((mean - _as_f64(running_mean).reshape(C)) / sigma, -dmax, dmax)
    w = _affine(weight, C, 1.0)
    b = _affine(bias, C, 0.0)

    def bc(v):
        return _per_channel(v, x.ndim, axis)

    xhat = (x - bc(mean)) / bc(sigma_b)
    y = bc(w) * (xhat * bc(r) + bc(d)) + bc(b)
    return y, BatchRenormSaved(mean, 1.0 / sigma_b, var, r, d)


def batch_renorm_backward(
    grad_out,
    x,
    weight,
    saved: BatchRenormSaved,
    *,
    channel_axis: int = 1,
) -> Grads:
    """Batch renorm backward, r and d held constant.

    ``y = (weight * r) * xhat + (weight * d + bias)`` with xhat a function of
    x through the batch statistics, so, with ``dy = grad_out``::

        grad_input  = batch norm's backward (use_batch_stats=True) with
                      weight * r in place of weight
        grad_weight = r * sum(dy * xhat) + d * sum(dy)
        grad_bias   = sum(dy)

    Returns
    -------
    Grads
        ``(grad_input, grad_weight, grad_bias)`` in float64.
    """
    x = _as_f64(x)
    axis = _channel_axis(x.ndim, channel_axis)
    C = x.shape[axis]
    r = _as_f64(saved.r).reshape(C)
    d = _as_f64(saved.d).reshape(C)
    w = _affine(weight, C, 1.0)
    g = batch_norm_backward(
        grad_out,
        x,
        w * r,
        BatchNormSaved(saved.mean, saved.invstd, saved.var),
        channel_axis=axis,
        use_batch_stats=True,
    )
    return Grads(g.grad_input, r * g.grad_weight + d * g.grad_bias, g.grad_bias)


def batch_renorm(
    x,
    weight,
    bias,
    running_mean,
    running_var,
    *,
    training: bool = False,
    rmax: float = 1.0,
    dmax: float = 0.0,
    momentum: Optional[float] = 0.1,
    decay: Optional[float] = None,
    eps: float = 1e-5,
    channel_axis: int = 1,
    correction: int = 1,
    num_batches_tracked=None,
):
    """Batch renormalization with running statistics.

    ``training=True``: :func:`batch_renorm_forward` against the running
    statistics as they are on entry, then :func:`update_running_stats` with
    the batch mean and variance. ``training=False``: batch norm inference
    with the running statistics.

    Returns
    -------
    y : ndarray, float64, same shape as ``x``
    """
    x = _as_f64(x)
    axis = _channel_axis(x.ndim, channel_axis)
    if not training:
        return batch_norm(
            x, weight, bias, running_mean, running_var, training=False, eps=eps,
            channel_axis=axis,
        )
    y, saved = batch_renorm_forward(
        x, weight, bias, running_mean, running_var, rmax=rmax, dmax=dmax, eps=eps,
        channel_axis=axis,
    )
    update_running_stats(
        running_mean,
        running_var,
        saved.mean,
        saved.var,
        x.size // x.shape[axis],
        momentum=momentum,
        decay=decay,
        correction=correction,
        num_batches_tracked=num_batches_tracked,
    )
    return y


# ============================================================================
# Layer norm and RMS norm (float64 twins of bnc.layernorm)
# ============================================================================
#
# The normalized axes are x.shape[axis:] (axis = the first normalized axis);
# each "row" is one index of the leading axes x.shape[:axis]. Statistics have
# the leading shape. weight/bias have the normalized shape (None: 1 and 0).

__all__ += [
    "LayerNormSaved", "RMSNormSaved", "layer_norm", "layer_norm_forward",
    "layer_norm_backward", "rms_norm", "rms_norm_forward", "rms_norm_backward",
]


class LayerNormSaved(NamedTuple):
    """mean and invstd = 1/sqrt(var + eps) per row, shape x.shape[:axis], float64."""

    mean: np.ndarray
    invstd: np.ndarray


class RMSNormSaved(NamedTuple):
    """invrms = 1/sqrt(mean(x^2) + eps) per row, shape x.shape[:axis], float64."""

    invrms: np.ndarray


def _norm_axes(ndim: int, axis: int) -> Tuple[int, ...]:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for an array of dimension {ndim}")
    return tuple(range(axis % ndim, ndim))


def _row_affine(v, shape, fill: float) -> np.ndarray:
    return np.full(shape, fill) if v is None else _as_f64(v).reshape(shape)


def layer_norm_forward(x, weight=None, bias=None, *, axis: int = -1, eps: float = 1e-5):
    """y = (x - mean) * invstd * weight + bias, mean and biased variance over
    x.shape[axis:]; returns (y, LayerNormSaved(mean, invstd))."""
    x = _as_f64(x)
    axes = _norm_axes(x.ndim, axis)
    norm = x.shape[axes[0]:]
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * invstd * _row_affine(weight, norm, 1.0) + _row_affine(bias, norm, 0.0)
    lead = x.shape[:axes[0]]
    return y, LayerNormSaved(mean.reshape(lead), invstd.reshape(lead))


def layer_norm(x, weight=None, bias=None, *, axis: int = -1, eps: float = 1e-5):
    """Layer norm; see layer_norm_forward."""
    return layer_norm_forward(x, weight, bias, axis=axis, eps=eps)[0]


def layer_norm_backward(grad_out, x, weight, saved, *, axis: int = -1):
    """(grad_input, grad_weight, grad_bias) of layer norm, as Grads.

    g = dy * weight, xhat = (x - mean) * invstd:
    dx = invstd * (g - mean(g) - xhat * mean(g * xhat)) over each row;
    grad_weight = sum over rows of dy * xhat, grad_bias = sum of dy.
    """
    x, dy = _as_f64(x), _as_f64(grad_out)
    axes = _norm_axes(x.ndim, axis)
    norm, keep = x.shape[axes[0]:], x.shape[:axes[0]] + (1,) * len(axes)
    mean = _as_f64(saved[0]).reshape(keep)
    invstd = _as_f64(saved[1]).reshape(keep)
    xhat = (x - mean) * invstd
    g = dy * _row_affine(weight, norm, 1.0)
    dx = invstd * (g - g.mean(axis=axes, keepdims=True)
                   - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    lead_axes = tuple(range(axes[0]))
    return Grads(dx, (dy * xhat).sum(axis=lead_axes), dy.sum(axis=lead_axes))


def rms_norm_forward(x, weight=None, *, axis: int = -1, eps: Optional[float] = None,
                     eps_dtype=None):
    """y = x / sqrt(mean(x^2) + eps) * weight over x.shape[axis:]; returns
    (y, RMSNormSaved(invrms)). eps=None: np.finfo(eps_dtype or x's dtype).eps."""
    xin = np.asarray(x)
    if eps is None:
        eps = float(np.finfo(eps_dtype if eps_dtype is not None else xin.dtype).eps)
    x = _as_f64(xin)
    axes = _norm_axes(x.ndim, axis)
    norm = x.shape[axes[0]:]
    invrms = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    y = x * invrms * _row_affine(weight, norm, 1.0)
    return y, RMSNormSaved(invrms.reshape(x.shape[:axes[0]]))


def rms_norm(x, weight=None, *, axis: int = -1, eps: Optional[float] = None):
    """RMS norm; see rms_norm_forward."""
    return rms_norm_forward(x, weight, axis=axis, eps=eps)[0]


def rms_norm_backward(grad_out, x, weight, saved, *, axis: int = -1):
    """Grads(grad_input, grad_weight, None) of RMS norm.

    g = dy * weight, xhat = x * invrms:
    dx = invrms * (g - xhat * mean(g * xhat)); grad_weight = sum over rows of dy * xhat.
    """
    x, dy = _as_f64(x), _as_f64(grad_out)
    axes = _norm_axes(x.ndim, axis)
    norm, keep = x.shape[axes[0]:], x.shape[:axes[0]] + (1,) * len(axes)
    invrms = _as_f64(saved[0]).reshape(keep)
    xhat = x * invrms
    g = dy * _row_affine(weight, norm, 1.0)
    dx = invrms * (g - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    return Grads(dx, (dy * xhat).sum(axis=tuple(range(axes[0]))), None)


# ============================================================================
# Group norm (float64 twin of bnc.groupnorm)
# ============================================================================
#
# x is (N, C, *spatial) (channel_axis=1) or (N, *spatial, C) (channel_axis=-1);
# groups are num_groups blocks of C / num_groups consecutive channels;
# statistics per (n, group), shape (N, num_groups); weight/bias per channel.

__all__ += ["GroupNormSaved", "group_norm", "group_norm_forward", "group_norm_backward"]


class GroupNormSaved(NamedTuple):
    """mean and invstd = 1/sqrt(var + eps) per (n, group), shape (N, G), float64."""

    mean: np.ndarray
    invstd: np.ndarray


def _gn_grouped(x, num_groups: int, channel_axis: int):
    """x as (N, G, C/G, HW) channels first, and the channels-first shape."""
    ax = channel_axis % x.ndim
    xf = np.moveaxis(x, ax, 1)
    N, C = xf.shape[:2]
    if C % num_groups:
        raise ValueError(f"num_groups ({num_groups}) must divide the number of channels ({C})")
    return xf.reshape(N, num_groups, C // num_groups, -1), xf.shape, ax


def _gn_back(v, shape, ax):
    return np.moveaxis(v.reshape(shape), 1, ax)


def group_norm_forward(x, num_groups: int, weight=None, bias=None, *, channel_axis: int = 1,
                       eps: float = 1e-5):
    """y = (x - mean) * invstd * weight[c] + bias[c], mean and biased variance
    per (n, group); returns (y, GroupNormSaved(mean, invstd))."""
    x = _as_f64(x)
    xg, shape, ax = _gn_grouped(x, num_groups, channel_axis)
    N, G, Cg, _ = xg.shape
    mean = xg.mean(axis=(2, 3), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(2, 3), keepdims=True)
    invstd = 1.0 / np.sqrt(var + eps)
    w = _row_affine(weight, (G, Cg, 1), 1.0)
    b = _row_affine(bias, (G, Cg, 1), 0.0)
    y = (xg - mean) * invstd * w + b
    return _gn_back(y, shape, ax), GroupNormSaved(mean.reshape(N, G), invstd.reshape(N, G))


def group_norm(x, num_groups: int, weight=None, bias=None, *, channel_axis: int = 1,
               eps: float = 1e-5):
    """Group norm; see group_norm_forward."""
    return group_norm_forward(x, num_groups, weight, bias, channel_axis=channel_axis,
                              eps=eps)[0]


def group_norm_backward(grad_out, x, num_groups: int, weight, saved, *,
                        channel_axis: int = 1):
    """(grad_input, grad_weight, grad_bias) of group norm, as Grads.

    g = dy * weight[c], xhat = (x - mean) * invstd:
    dx = invstd * (g - mean(g) - xhat * mean(g * xhat)) over each (n, group);
    grad_weight[c] = sum over n and positions of dy * xhat, grad_bias[c] = sum of dy.
    """
    x, dy = _as_f64(x), _as_f64(grad_out)
    xg, shape, ax = _gn_grouped(x, num_groups, channel_axis)
    dyg = _gn_grouped(dy, num_groups, channel_axis)[0]
    N, G, Cg, _ = xg.shape
    mean = _as_f64(saved[0]).reshape(N, G, 1, 1)
    invstd = _as_f64(saved[1]).reshape(N, G, 1, 1)
    xhat = (xg - mean) * invstd
    g = dyg * _row_affine(weight, (G, Cg, 1), 1.0)
    dx = invstd * (g - g.mean(axis=(2, 3), keepdims=True)
                   - xhat * (g * xhat).mean(axis=(2, 3), keepdims=True))
    return Grads(_gn_back(dx, shape, ax), (dyg * xhat).sum(axis=(0, 3)).reshape(-1),
                 dyg.sum(axis=(0, 3)).reshape(-1))


# ---------------------------------------------------------------------------
# instance norm

__all__ += ["InstanceNormSaved", "instance_norm", "instance_norm_forward",
            "instance_norm_backward"]


class InstanceNormSaved(NamedTuple):
    """mean, invstd = 1/sqrt(var + eps) and var per (n, c), shape (N, C), float64."""

    mean: np.ndarray
    invstd: np.ndarray
    var: np.ndarray


def _in_view(x, channel_axis: int):
    """x as (N, C, S) channels first (S: the spatial positions), and a function
    mapping such an array back to x's layout."""
    ax = _channel_axis(x.ndim, channel_axis)
    xf = np.moveaxis(x, ax, 1)
    shape = xf.shape
    return xf.reshape(shape[0], shape[1], -1), lambda v: np.moveaxis(v.reshape(shape), 1, ax)


def instance_norm_forward(x, weight=None, bias=None, *, mean=None, var=None,
                          eps: float = 1e-5, channel_axis: int = 1):
    """y = (x - mean) * invstd * weight[c] + bias[c]. Without mean/var: mean
    and biased variance per (n, c) over the spatial positions; with them
    (shape (C,)): those for every n. Returns (y, InstanceNormSaved), (N, C)."""
    x3, back = _in_view(_as_f64(x), channel_axis)
    N, C, _ = x3.shape
    if mean is None:
        m = x3.mean(axis=2)
        v = ((x3 - m[:, :, None]) ** 2).mean(axis=2)
    else:
        m = np.tile(_as_f64(mean).reshape(C), (N, 1))
        v = np.tile(_as_f64(var).reshape(C), (N, 1))
    invstd = 1.0 / np.sqrt(v + eps)
    w = _affine(weight, C, 1.0)[:, None]
    b = _affine(bias, C, 0.0)[:, None]
    y = (x3 - m[:, :, None]) * invstd[:, :, None] * w + b
    return back(y), InstanceNormSaved(m, invstd, v)


def instance_norm_backward(grad_out, x, weight, saved, *, use_input_stats: bool = True,
                           channel_axis: int = 1):
    """(grad_input, grad_weight, grad_bias) of instance norm, as Grads.

    xhat = (x - mean) * invstd, g = dy * weight[c]; per (n, c) over the
    spatial positions: use_input_stats=True:
    dx = invstd * (g - mean(g) - xhat * mean(g * xhat)); False (constant
    statistics): dx = g * invstd. grad_weight[c] = sum over n and positions
    of dy * xhat, grad_bias[c] = sum of dy.
    """
    x3, back = _in_view(_as_f64(x), channel_axis)
    dy3 = _in_view(_as_f64(grad_out), channel_axis)[0]
    N, C, _ = x3.shape
    mean = _as_f64(saved[0]).reshape(N, C, 1)
    invstd = _as_f64(saved[1]).reshape(N, C, 1)
    xhat = (x3 - mean) * invstd
    g = dy3 * _affine(weight, C, 1.0)[:, None]
    if use_input_stats:
        dx = invstd * (g - g.mean(axis=2, keepdims=True)
                       - xhat * (g * xhat).mean(axis=2, keepdims=True))
    else:
        dx = g * invstd
    return Grads(back(dx), (dy3 * xhat).sum(axis=(0, 2)), dy3.sum(axis=(0, 2)))


def instance_norm(x, weight=None, bias=None, running_mean=None, running_var=None, *,
                  use_input_stats: bool = True, momentum: Optional[float] = 0.1,
                  eps: float = 1e-5, channel_axis: int = 1, num_batches_tracked=None):
    """Instance norm as torch.nn.functional.instance_norm; returns y (float64).

    use_input_stats=True with running statistics updates them in place:
    rm = (1-m)*rm + m*mean_n(mean[n, c]),
    rv = (1-m)*rv + m*mean_n(var[n, c] * S/(S-1)) (S spatial positions);
    momentum=None: m = 1/num_batches_tracked after its increment.
    use_input_stats=False normalizes with the running statistics.
    """
    if not use_input_stats:
        return instance_norm_forward(x, weight, bias, mean=running_mean, var=running_var,
                                     eps=eps, channel_axis=channel_axis)[0]
    y, s = instance_norm_forward(x, weight, bias, eps=eps, channel_axis=channel_axis)
    if running_mean is not None:
        S = _as_f64(x).size // (s.mean.size)
        update_running_stats(running_mean, running_var, s.mean.mean(axis=0),
                             s.var.mean(axis=0), S, momentum=momentum,
                             num_batches_tracked=num_batches_tracked)
    return y
