"""Stateful normalization layers on top of the functional API.

``BatchNorm``, ``BatchRenorm``, ``GroupNorm``, ``InstanceNorm``, ``LayerNorm``
and ``RMSNorm`` hold their parameters, running statistics and gradients as
plain NumPy arrays and compute with the functions of :mod:`bnc` (never the
other way round). They follow PyTorch's ``nn.BatchNorm*d``, ``nn.GroupNorm``,
``nn.InstanceNorm*d``, ``nn.LayerNorm`` and ``nn.RMSNorm``; where a choice had
to be made it is listed here.

State
-----
- Parameters ``weight`` and ``bias`` (ones and zeros; None when the layer has
  no affine part) and buffers ``running_mean`` (zeros), ``running_var`` (ones)
  and ``num_batches_tracked`` (a 0-d int64 array) are attributes. Their dtype
  is the layer's ``dtype``: float32 (the default; the layer then takes float16
  and float32 input) or float64 (float64 input). The layer keeps these arrays
  for its whole life and writes into them in place, so an optimizer may hold
  them and update them in place (``layer.weight -= lr * layer.grad_weight``).
- ``grad_weight`` / ``grad_bias`` are None until the first backward, then
  accumulate (each backward adds its gradients, as PyTorch's ``.grad`` does);
  ``zero_grad()`` sets them back to None (``zero_grad(set_to_none=False)``
  fills them with zeros instead). Accumulated gradients are new arrays after
  each backward (never written in place).
- ``parameters()`` and ``grads()`` return dicts name -> array.

Modes
-----
- ``train()`` (the initial mode) / ``eval()`` as in PyTorch: batch norm,
  batch renorm and instance norm with ``track_running_stats`` normalize with
  the batch (instance) statistics and update the running statistics in
  training, and with the running statistics in eval. Without running
  statistics they always use batch statistics. Group, layer and RMS norm
  compute the same in both modes.
- ``freeze()`` (``freeze(False)`` undoes it) makes a layer with running
  statistics normalize with them and never update them, in any mode, while
  ``weight`` and ``bias`` stay trainable (backward with constant statistics,
  like a layer in eval mode; detectron2's FrozenBatchNorm with trainable
  affine parameters). It needs running statistics (ValueError otherwise);
  on group, layer and RMS norm, whose statistics are per sample, it only sets
  the flag.

Forward and backward
--------------------
``forward(x)`` (also ``layer(x)``) returns a new array like ``x`` and keeps
what the backward needs: a reference to ``x`` (not a copy: do not modify
``x`` or the parameters in place between forward and backward) and the
saved statistics. ``backward(grad_out)`` returns ``grad_input``, adds the
parameter gradients to ``grad_weight`` / ``grad_bias`` and drops the cache:
one backward per forward, as PyTorch frees the graph. A backward without a
forward, or a second one, raises RuntimeError. A backward in eval mode or
while frozen treats the running statistics as constants
(``use_batch_stats=False``). ``load_state_dict`` also drops the cache (the
parameters changed).

Input checks: ``x`` must have the layer's channel count at ``channel_axis``
(``num_features``; group/instance norm: channels first or last) or end with
``normalized_shape`` (layer and RMS norm), and a dtype the layer computes
with; other checks are the functional API's.

State dicts and pickling
------------------------
``state_dict()`` returns an OrderedDict of copies with PyTorch's key names
(``weight``, ``bias``, ``running_mean``, ``running_var``,
``num_batches_tracked``, only those the layer has). ``load_state_dict(sd,
strict=True)`` accepts any mapping of array-likes (``np.asarray`` is applied:
a PyTorch state dict converted with ``.numpy()``, or CPU tensors directly).
It checks everything before writing anything: with strict=True missing and
unexpected keys are a ValueError (strict=False ignores them), a wrong shape is
a ValueError, a non-numeric array (or a non-integer ``num_batches_tracked``)
a TypeError; values are cast to the layer's dtype. A missing
``num_batches_tracked`` keeps the current count, as PyTorch does for
checkpoints without that buffer. It returns ``IncompatibleKeys(missing_keys,
unexpected_keys)``. Pickling (and ``copy.deepcopy``) keeps the configuration,
mode, parameters, buffers and gradients, never the forward cache.

Population statistics
---------------------
``recompute_running_stats(batches)`` (batch norm, batch renorm, instance
norm with running statistics) replaces the running statistics with exact
statistics of all the given batches ("precise BN"): per batch
`bnc.batch_norm_stats`, merged with `bnc.combine_stats`, so
``running_mean`` is the mean of every value seen and ``running_var`` their
variance with ``correction`` (1 by default: unbiased, PyTorch's running_var
convention). Instance norm's running statistics are averages of per-instance
statistics: they become the average of every instance's mean and unbiased
variance. ``num_batches_tracked`` is set to the number of batches, as after
``reset_running_stats()`` and a cumulative-average pass over them
(``torch.optim.swa_utils.update_bn``). Mode, freezing, momentum and
``virtual_batch_size`` play no part; the forward cache and gradients are
untouched. Nothing is written if a batch is rejected or the iteration raises.

Ghost batch norm
----------------
``BatchNorm(..., virtual_batch_size=V)`` normalizes, whenever it uses batch
statistics, each slice ``x[k*V:(k+1)*V]`` along axis 0 (the batch axis; the
channel axis must be another one) with that slice's own statistics: one
training kernel call per slice, each reading its slice once for the
statistics and the output (in cache when it fits). The last slice may be
smaller; a batch of at most V samples is plain batch norm. The backward is
per slice as well. The running statistics are updated once per forward, as
Keras' ``virtual_batch_size`` does: with the mean over the slices of their
means and of their variances (each with ``correction``, so unbiased by
default; slices weighted by size, which is the plain mean when they are of
equal size), and ``num_batches_tracked`` grows by one. The running variance
thus estimates the within-slice variance the training normalization used.
Keras' layer differs in two ways: its ghost batch ``j`` holds samples
``j, j + N/V, j + 2N/V, ...`` (a reshape to ``(V, N/V, ...)``) where bnc
takes consecutive samples, as the ghost batch norm paper and PyTorch
implementations (``x.split(V)``) do, and its moving variance is biased
(``correction=0`` here). For shuffled batches the sample assignment makes no
difference in distribution.

Threads: every call passes the layer's ``n_threads`` attribute (None: the
global default) to the functional API. A layer holds one forward cache and
one set of gradients: use a layer from one thread at a time (different
layers may run concurrently).

Failures: every check runs and every result is computed before the layer
writes anything, so a forward, backward, ``load_state_dict`` or
``recompute_running_stats`` that raises (a bad argument, or a
KeyboardInterrupt inside a functional call) leaves every array, counter,
gradient and the cache as they were. The writes come last: the running
statistics through `bnc.update_running_stats` (which checks, then writes),
gradients and cache in one attribute update; ``load_state_dict``,
``recompute_running_stats`` and the resets hold back a Ctrl-C until their
writes are done.
"""
from __future__ import annotations

import signal
import threading
from collections import OrderedDict
from collections.abc import Mapping
from numbers import Integral
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

import numpy as np

from bnc._core import output_like
from bnc.batchnorm import (
    _momentum,
    _real,
    batch_norm_backward,
    batch_norm_forward,
    batch_norm_stats,
    combine_stats,
    update_running_stats,
)
from bnc.batchrenorm import batch_renorm_backward, batch_renorm_forward
from bnc.groupnorm import group_norm_backward, group_norm_forward
from bnc.instancenorm import instance_norm_backward, instance_norm_forward
from bnc.layernorm import (
    layer_norm_backward,
    layer_norm_forward,
    rms_norm_backward,
    rms_norm_forward,
)

__all__ = ["BatchNorm", "BatchRenorm", "GroupNorm", "InstanceNorm", "LayerNorm",
           "RMSNorm", "IncompatibleKeys"]

_PICKLE_VERSION = 1
# layer dtype -> the input dtypes it computes with
_INPUT_DTYPES = {np.dtype(np.float32): frozenset([np.dtype(np.float32), np.dtype(np.float16)]),
                 np.dtype(np.float64): frozenset([np.dtype(np.float64)])}


class IncompatibleKeys(NamedTuple):
    """What `load_state_dict` did not use (strict=False) or did not find."""

    missing_keys: List[str]
    unexpected_keys: List[str]


class _Cache(NamedTuple):
    """What a forward keeps for its backward."""

    x: np.ndarray
    saved: Any          # the functional forward's saved statistics (a list for ghosts)
    batch_stats: bool   # statistics were functions of x (else constants)


class _NoInterrupt:
    """Holds back SIGINT (KeyboardInterrupt) while a layer writes several arrays.

    Python delivers signals between bytecodes, so a Ctrl-C could otherwise land
    between two writes. In the main thread the Python-level handler is swapped
    for one that records the signal; the original runs after the block. Other
    threads never receive KeyboardInterrupt."""

    __slots__ = ("old", "hit")

    def __enter__(self):
        self.old = self.hit = None
        if threading.current_thread() is threading.main_thread():
            old = signal.getsignal(signal.SIGINT)
            if callable(old):
                self.old = old
                signal.signal(signal.SIGINT, self._hold)
        return self

    def _hold(self, signum, frame):
        self.hit = (signum, frame)

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
            if self.hit is not None:
                self.old(*self.hit)
        return False


def _param_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError("dtype is the dtype of the parameters and statistics: float32 "
                        f"(float16/float32 input) or float64 (float64 input), got {dt}")
    return dt


def _positive_int(v, name) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return int(v)


def _eps(eps, allow_none=False):
    if eps is None and allow_none:
        return None
    e = _real(eps, "eps")
    if not 0.0 < e < float("inf"):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return e


class _Layer:
    """The common part: mode, gradients, state dicts, pickling."""

    # names of parameters / buffers this class can have, in PyTorch's order
    _PARAMS: Tuple[str, ...] = ("weight", "bias")
    _BUFFERS: Tuple[str, ...] = ()
    _has_running = False

    # -- construction --------------------------------------------------------

    def _init_common(self, dtype, n_threads):
        self.dtype = _param_dtype(dtype)
        self.n_threads = n_threads
        self.training = True
        self.frozen = False
        self.grad_weight = None
        self.grad_bias = None
        self._cache = None

    def _config(self) -> Dict[str, Any]:
        """Constructor arguments (for repr and pickling)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" if k != "dtype" else f"dtype={np.dtype(v).name}"
                         for k, v in self._config().items())
        mode = "train" if self.training else "eval"
        return f"{type(self).__name__}({args}) [{mode}{', frozen' if self.frozen else ''}]"

    # -- modes -------------------------------------------------------------------

    def train(self, mode: bool = True):
        """Training mode (mode=False: eval). Returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode: running statistics are used (when the layer has them)."""
        return self.train(False)

    def freeze(self, frozen: bool = True):
        """Normalize with the running statistics and never update them, in any
        mode; weight and bias stay trainable. Returns self."""
        if frozen and self._has_running and self.running_mean is None:
            raise ValueError(f"freeze() needs running statistics; this "
                             f"{type(self).__name__} has track_running_stats=False")
        self.frozen = bool(frozen)
        return self

    def __call__(self, x):
        return self.forward(x)

    # -- parameters and gradients ------------------------------------------

    def parameters(self) -> Dict[str, np.ndarray]:
        """name -> parameter array (the live arrays, not copies)."""
        return {n: getattr(self, n) for n in self._PARAMS if getattr(self, n) is not None}

    def grads(self) -> Dict[str, Optional[np.ndarray]]:
        """name -> accumulated gradient (None before the first backward)."""
        return {n: getattr(self, "grad_" + n) for n in self.parameters()}

    def zero_grad(self, set_to_none: bool = True):
        """Forget the accumulated gradients (None, or zeros with set_to_none=False)."""
        new = {}
        for n, p in self.parameters().items():
            new["grad_" + n] = None if set_to_none else np.zeros_like(p)
        self.__dict__.update(new)

    def reset_parameters(self):
        """weight = 1, bias = 0 and the running statistics reset."""
        with _NoInterrupt():
            if getattr(self, "weight", None) is not None:
                self.weight[...] = 1
            if getattr(self, "bias", None) is not None:
                self.bias[...] = 0
            self._reset_running()
            self._cache = None

    def _reset_running(self):
        pass

    def _commit_backward(self, dw, db):
        """Add the gradients and drop the cache in one step (one dict update)."""
        new = {"_cache": None}  # dw, db are new arrays from the functional API
        if self.weight is not None:
            gw = self.grad_weight
            new["grad_weight"] = dw if gw is None else gw + dw
        if self.bias is not None:
            gb = self.grad_bias
            new["grad_bias"] = db if gb is None else gb + db
        self.__dict__.update(new)

    def _take_cache(self, grad_out):
        cache = self._cache
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a forward() first "
                               "(each forward allows one backward)")
        g = np.asarray(grad_out)
        if g.shape != cache.x.shape:
            raise ValueError(f"grad_out must have the forward input's shape {cache.x.shape}, "
                             f"got {g.shape}")
        return cache, g

    def backward(self, grad_out):
        """grad_input for grad_out (the gradient of the forward's output);
        adds the parameter gradients to grad_weight / grad_bias."""
        cache, g = self._take_cache(grad_out)
        dx, dw, db = self._backward(cache, g)
        self._commit_backward(dw, db)
        return dx

    def _backward(self, cache, g):
        raise NotImplementedError

    # -- input ---------------------------------------------------------------

    def _input(self, x) -> np.ndarray:
        xa = np.asarray(x)
        if xa.dtype not in _INPUT_DTYPES[self.dtype]:
            allowed = "float64" if self.dtype == np.float64 else "float16 or float32"
            raise TypeError(f"{type(self).__name__} with dtype {self.dtype} takes {allowed} "
                            f"input, got {xa.dtype} (convert x, or make the layer with "
                            f"dtype=np.{'float64' if xa.dtype != np.float64 else 'float32'})")
        return xa

    def _channels(self, xa, channel_axis, num, what="num_features") -> int:
        """The normalized channel axis, after checking the channel count."""
        if xa.ndim < 2:
            raise ValueError(f"x must have at least 2 dimensions (N, C, ...), got shape "
                             f"{xa.shape}")
        if not -xa.ndim <= channel_axis < xa.ndim:
            raise np.exceptions.AxisError(channel_axis, xa.ndim, "channel_axis")
        ax = channel_axis % xa.ndim
        if xa.shape[ax] != num:
            raise ValueError(f"x has {xa.shape[ax]} channels at channel_axis={channel_axis}, "
                             f"the layer has {what}={num}")
        return ax

    # -- state dicts -----------------------------------------------------------

    def _state_names(self) -> List[str]:
        return [n for n in self._PARAMS + self._BUFFERS if getattr(self, n, None) is not None]

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """An OrderedDict name -> copy, with PyTorch's key names."""
        return OrderedDict((n, np.array(getattr(self, n), copy=True))
                           for n in self._state_names())

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy values into the layer's arrays (in place) after checking all.

        strict=True: missing or unexpected keys are a ValueError (a missing
        num_batches_tracked keeps the current count). Shapes must match; values
        are cast to the layer's dtype. Nothing is written if anything is wrong.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping name -> array, got "
                            f"{type(state_dict).__name__}")
        names = self._state_names()
        missing = [n for n in names if n not in state_dict and n != "num_batches_tracked"]
        unexpected = [k for k in state_dict if k not in names]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append("missing key(s) " + ", ".join(map(repr, missing)))
            if unexpected:
                parts.append("unexpected key(s) " + ", ".join(map(repr, unexpected)))
            raise ValueError(f"error(s) loading the state_dict of {type(self).__name__}: "
                             + "; ".join(parts))
        new = {}
        for n in names:
            if n not in state_dict:
                continue
            cur = getattr(self, n)
            try:
                v = np.asarray(state_dict[n])
            except Exception as e:  # an object NumPy cannot convert
                raise TypeError(f"state_dict[{n!r}] is not an array: {e}") from None
            if n == "num_batches_tracked":
                if v.dtype.kind not in "iu":
                    raise TypeError(f"state_dict['num_batches_tracked'] must be an integer, "
                                    f"got dtype {v.dtype}")
                if v.shape != ():
                    raise ValueError("state_dict['num_batches_tracked'] must be 0-d, got "
                                     f"shape {v.shape}")
                if v < 0:
                    raise ValueError(f"state_dict['num_batches_tracked'] must be >= 0, got {v}")
                if v > np.iinfo(np.int64).max:
                    raise ValueError(f"state_dict['num_batches_tracked'] is too large: {v}")
            else:
                if v.dtype.kind not in "fiu":
                    raise TypeError(f"state_dict[{n!r}] must hold real numbers, got dtype "
                                    f"{v.dtype}")
                if v.shape != cur.shape:
                    raise ValueError(f"state_dict[{n!r}] has shape {v.shape}, the layer's "
                                     f"{n} has shape {cur.shape}")
            if not cur.flags.writeable:
                raise ValueError(f"the layer's {n} is read-only")
            with np.errstate(all="ignore"):  # float64 -> float32 may overflow to inf
                new[n] = v.astype(cur.dtype)
        with _NoInterrupt():
            for n, v in new.items():
                np.copyto(getattr(self, n), v)
            self._cache = None
        return IncompatibleKeys([n for n in names if n not in state_dict], unexpected)

    # -- pickling --------------------------------------------------------------

    def __getstate__(self):
        arrays = {n: getattr(self, n) for n in self._state_names()}
        grads = {n: getattr(self, n) for n in ("grad_weight", "grad_bias")}
        return {"version": _PICKLE_VERSION, "config": self._config(),
                "training": self.training, "frozen": self.frozen, "arrays": arrays,
                "grads": grads}

    def __setstate__(self, state):
        if state.get("version") != _PICKLE_VERSION:
            raise ValueError(f"cannot unpickle a {type(self).__name__} of version "
                             f"{state.get('version')!r}")
        self.__init__(**state["config"])
        for n, v in state["arrays"].items():
            setattr(self, n, v)
        self.__dict__.update(state["grads"])
        self.training = state["training"]
        self.frozen = state["frozen"]


class _Running(_Layer):
    """Layers with optional running statistics (batch, renorm, instance norm)."""

    _BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
    _has_running = True

    def _init_running(self, num_features, eps, momentum, affine, track_running_stats,
                      channel_axis, dtype, n_threads):
        self._init_common(dtype, n_threads)
        self.num_features = _positive_int(num_features, "num_features")
        self.eps = _eps(eps)
        self.momentum = _momentum(momentum, None)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        if isinstance(channel_axis, (bool, np.bool_)) or not isinstance(channel_axis, Integral):
            raise TypeError(f"channel_axis must be an int, got {type(channel_axis).__name__}")
        self.channel_axis = int(channel_axis)
        C, dt = self.num_features, self.dtype
        self.weight = np.ones(C, dt) if self.affine else None
        self.bias = np.zeros(C, dt) if self.affine else None
        if self.track_running_stats:
            self.running_mean = np.zeros(C, dt)
            self.running_var = np.ones(C, dt)
            self.num_batches_tracked = np.array(0, np.int64)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def _reset_running(self):
        if self.running_mean is not None:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_running_stats(self):
        """running_mean = 0, running_var = 1, num_batches_tracked = 0 (in place)."""
        with _NoInterrupt():
            self._reset_running()

    def _batch_stats(self) -> bool:
        """Does a forward now normalize with batch statistics?"""
        if self.running_mean is None:
            return True
        return self.training and not self.frozen

    def _updates(self) -> bool:
        return self.running_mean is not None and self.training and not self.frozen

    def _update(self, mean, var, count, correction):
        update_running_stats(self.running_mean, self.running_var, mean, var, count,
                             momentum=self.momentum, correction=correction,
                             num_batches_tracked=self.num_batches_tracked)

    def _commit_population(self, mean, var, nbatches):
        if not (self.running_mean.flags.writeable and self.running_var.flags.writeable
                and self.num_batches_tracked.flags.writeable):
            raise ValueError("the running statistics are read-only")
        with _NoInterrupt():
            self.running_mean[...] = mean
            self.running_var[...] = var
            self.num_batches_tracked[...] = nbatches

    def _need_running(self, what):
        if self.running_mean is None:
            raise ValueError(f"{what} needs running statistics (track_running_stats=True)")


class _BatchNormBase(_Running):
    """Batch norm and batch renorm: statistics per channel over every other axis."""

    def _init_bn(self, num_features, eps, momentum, affine, track_running_stats,
                 channel_axis, correction, dtype, n_threads):
        self._init_running(num_features, eps, momentum, affine, track_running_stats,
                           channel_axis, dtype, n_threads)
        if isinstance(correction, (bool, np.bool_)) or not isinstance(correction, Integral):
            raise TypeError(f"correction must be an int, got {type(correction).__name__}")
        if correction < 0:
            raise ValueError(f"correction must be >= 0, got {correction}")
        self.correction = int(correction)

    def _eval_forward(self, xa):
        y, saved = batch_norm_forward(xa, self.weight, self.bias, mean=self.running_mean,
                                      var=self.running_var, eps=self.eps,
                                      channel_axis=self.channel_axis, n_threads=self.n_threads)
        self._cache = _Cache(xa, saved, False)
        return y

    def _eval_backward(self, cache, g):
        return batch_norm_backward(g, cache.x, self.weight, cache.saved,
                                   channel_axis=self.channel_axis, use_batch_stats=False,
                                   n_threads=self.n_threads)

    def recompute_running_stats(self, batches: Iterable):
        """Set the running statistics to the exact statistics of all `batches`.

        Each batch (array_like like a forward input) is reduced with
        `bnc.batch_norm_stats`; the per-batch results are merged exactly with
        `bnc.combine_stats`. running_mean = the mean of every value,
        running_var = their variance times n / (n - correction) (n values per
        channel in all; unbiased by default), num_batches_tracked = the number
        of batches. Nothing is written if a batch is rejected. Returns self.
        """
        self._need_running("recompute_running_stats")
        means, variances, counts = [], [], []
        for x in batches:
            xa = self._input(x)
            self._channels(xa, self.channel_axis, self.num_features)
            m, v, n = batch_norm_stats(xa, channel_axis=self.channel_axis,
                                       n_threads=self.n_threads)
            means.append(m)
            variances.append(v)
            counts.append(n)
        if not counts:
            raise ValueError("recompute_running_stats needs at least one batch")
        mean, var, total = combine_stats(np.asarray(means, np.float64),
                                         np.asarray(variances, np.float64),
                                         np.asarray(counts, np.int64))
        if total <= self.correction:
            raise ValueError(f"{total} values per channel in all: need more than "
                             f"correction={self.correction}")
        self._commit_population(mean, var * (total / (total - self.correction)), len(counts))
        return self


class BatchNorm(_BatchNormBase):
    """Batch normalization layer (PyTorch's nn.BatchNorm1d/2d/3d in one class).

    Parameters
    ----------
    num_features : int, C
    eps : float > 0, default 1e-5
    momentum : float in [0, 1] or None, default 0.1
        Weight of the new batch in the running statistics; None: cumulative
        average over num_batches_tracked batches.
    affine : bool, default True (weight and bias)
    track_running_stats : bool, default True
    channel_axis : int, default 1 (-1 for channels-last data)
    correction : int, default 1: the running variance gets the batch variance
        times n/(n - correction) (0: biased, as Keras and ONNX)
    virtual_batch_size : int or None
        Ghost batch norm: see the module docstring.
    dtype : float32 (default) or float64, of the parameters and statistics
    n_threads : int or None, passed to every kernel call

    Input of any ndim >= 2 with C at channel_axis.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, channel_axis=1, correction=1,
                 virtual_batch_size=None, dtype=np.float32, n_threads=None):
        self._init_bn(num_features, eps, momentum, affine, track_running_stats,
                      channel_axis, correction, dtype, n_threads)
        if virtual_batch_size is not None:
            virtual_batch_size = _positive_int(virtual_batch_size, "virtual_batch_size")
            if self.channel_axis == 0:
                raise ValueError("virtual_batch_size splits axis 0, the batch axis: the "
                                 "channel axis must be another one")
        self.virtual_batch_size = virtual_batch_size

    def _config(self):
        return dict(num_features=self.num_features, eps=self.eps, momentum=self.momentum,
                    affine=self.affine, track_running_stats=self.track_running_stats,
                    channel_axis=self.channel_axis, correction=self.correction,
                    virtual_batch_size=self.virtual_batch_size, dtype=self.dtype,
                    n_threads=self.n_threads)

    def _ghost_slices(self, xa, ax) -> Optional[List[slice]]:
        V = self.virtual_batch_size
        if V is None or xa.shape[0] <= V:
            return None
        if ax == 0:
            raise ValueError("virtual_batch_size splits axis 0, the batch axis: the "
                             "channel axis must be another one")
        N = xa.shape[0]
        return [slice(s, min(s + V, N)) for s in range(0, N, V)]

    def forward(self, x):
        """y = batch norm of x; updates the running statistics in training."""
        xa = self._input(x)
        ax = self._channels(xa, self.channel_axis, self.num_features)
        if not self._batch_stats():
            return self._eval_forward(xa)
        update = self._updates()
        slices = self._ghost_slices(xa, ax)
        C = self.num_features
        if slices is None:
            y, saved = batch_norm_forward(xa, self.weight, self.bias, eps=self.eps,
                                          channel_axis=self.channel_axis,
                                          n_threads=self.n_threads)
            if update:
                self._update(saved.mean, saved.var, xa.size // C, self.correction)
        else:
            counts = [xa[s].size // C for s in slices]
            if update and min(counts) <= self.correction:
                raise ValueError(f"virtual batches of {self.virtual_batch_size} samples "
                                 f"leave {min(counts)} value(s) per channel in one: need "
                                 f"more than correction={self.correction}")
            y = output_like(xa)  # the virtual batches write into it
            saved = []
            for s in slices:  # one training kernel call per virtual batch
                saved.append(batch_norm_forward(
                    xa[s], self.weight, self.bias, eps=self.eps,
                    channel_axis=self.channel_axis, out=y[s], n_threads=self.n_threads)[1])
            if update:
                w = np.asarray(counts, np.float64)
                means = np.array([sv.mean for sv in saved], np.float64)
                unbiased = np.array([sv.var for sv in saved], np.float64) * (
                    w / (w - self.correction))[:, None]
                mean = (w[:, None] * means).sum(axis=0) / w.sum()
                var = (w[:, None] * unbiased).sum(axis=0) / w.sum()
                self._update(mean.astype(self.dtype), var.astype(self.dtype), int(w.sum()), 0)
            saved = list(zip(slices, saved))
        self._cache = _Cache(xa, saved, True)
        return y

    def _backward(self, cache, g):
        if not cache.batch_stats:
            return self._eval_backward(cache, g)
        if not isinstance(cache.saved, list):
            return batch_norm_backward(g, cache.x, self.weight, cache.saved,
                                       channel_axis=self.channel_axis,
                                       n_threads=self.n_threads)
        dx = output_like(cache.x)
        dw = db = 0.0
        for s, sv in cache.saved:
            _, gw, gb = batch_norm_backward(g[s], cache.x[s], self.weight, sv,
                                            channel_axis=self.channel_axis, out=dx[s],
                                            n_threads=self.n_threads)
            dw = dw + gw.astype(np.float64)
            db = db + gb.astype(np.float64)
        return dx, dw.astype(self.dtype), db.astype(self.dtype)


class BatchRenorm(_BatchNormBase):
    """Batch renormalization layer (Ioffe 2017) on `bnc.batch_renorm_forward`.

    Arguments as BatchNorm (always with running statistics, which r and d are
    taken against), plus rmax >= 1 and dmax >= 0 (attributes: change them
    during training for the usual schedule). rmax=1, dmax=0 (the defaults) is
    batch norm. Training forward: batch statistics corrected by r and d, then
    the running update; eval or frozen: batch norm with the running statistics.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, *, rmax=1.0,
                 dmax=0.0, channel_axis=1, correction=1, dtype=np.float32, n_threads=None):
        self._init_bn(num_features, eps, momentum, affine, True, channel_axis, correction,
                      dtype, n_threads)
        self.rmax = rmax
        self.dmax = dmax

    def _config(self):
        return dict(num_features=self.num_features, eps=self.eps, momentum=self.momentum,
                    affine=self.affine, rmax=self.rmax, dmax=self.dmax,
                    channel_axis=self.channel_axis, correction=self.correction,
                    dtype=self.dtype, n_threads=self.n_threads)

    def forward(self, x):
        """y = batch renorm of x; updates the running statistics in training."""
        xa = self._input(x)
        self._channels(xa, self.channel_axis, self.num_features)
        if not self._batch_stats():
            return self._eval_forward(xa)
        y, saved = batch_renorm_forward(xa, self.weight, self.bias, self.running_mean,
                                        self.running_var, rmax=self.rmax, dmax=self.dmax,
                                        eps=self.eps, channel_axis=self.channel_axis,
                                        n_threads=self.n_threads)
        self._update(saved.mean, saved.var, xa.size // self.num_features, self.correction)
        self._cache = _Cache(xa, saved, True)
        return y

    def _backward(self, cache, g):
        if not cache.batch_stats:
            return self._eval_backward(cache, g)
        return batch_renorm_backward(g, cache.x, self.weight, cache.saved,
                                     channel_axis=self.channel_axis, n_threads=self.n_threads)


class InstanceNorm(_Running):
    """Instance normalization layer (PyTorch's nn.InstanceNorm1d/2d/3d in one class).

    Parameters as PyTorch (defaults affine=False, track_running_stats=False),
    channel_axis 1 (N, C, *spatial) or -1 (N, *spatial, C), dtype, n_threads.
    With running statistics: training normalizes each instance with its own
    statistics and updates the running ones (`bnc.instance_norm`'s rule: the
    batch average of per-instance means and unbiased variances); eval and
    frozen normalize with the running statistics. Unlike PyTorch's module,
    num_batches_tracked counts the training batches (PyTorch leaves it at 0)
    and momentum=None is the cumulative average over them (PyTorch treats it
    as 0).
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, *, channel_axis=1, dtype=np.float32,
                 n_threads=None):
        self._init_running(num_features, eps, momentum, affine, track_running_stats,
                           channel_axis, dtype, n_threads)

    def _config(self):
        return dict(num_features=self.num_features, eps=self.eps, momentum=self.momentum,
                    affine=self.affine, track_running_stats=self.track_running_stats,
                    channel_axis=self.channel_axis, dtype=self.dtype,
                    n_threads=self.n_threads)

    def _stats(self, xa):
        """Per-instance saved statistics of a batch, and the spatial size."""
        self._channels(xa, self.channel_axis, self.num_features)
        y, saved = instance_norm_forward(xa, self.weight, self.bias, eps=self.eps,
                                         channel_axis=self.channel_axis,
                                         n_threads=self.n_threads)
        return y, saved, xa.size // (xa.shape[0] * self.num_features)

    def forward(self, x):
        """y = instance norm of x; updates the running statistics in training."""
        xa = self._input(x)
        if not self._batch_stats():
            self._channels(xa, self.channel_axis, self.num_features)
            y, saved = instance_norm_forward(xa, self.weight, self.bias,
                                             mean=self.running_mean, var=self.running_var,
                                             eps=self.eps, channel_axis=self.channel_axis,
                                             n_threads=self.n_threads)
            self._cache = _Cache(xa, saved, False)
            return y
        y, saved, hw = self._stats(xa)
        if self._updates():
            self._update(saved.mean.mean(axis=0, dtype=np.float64),
                         saved.var.mean(axis=0, dtype=np.float64), hw, 1)
        self._cache = _Cache(xa, saved, True)
        return y

    def _backward(self, cache, g):
        return instance_norm_backward(g, cache.x, self.weight, cache.saved,
                                      use_input_stats=cache.batch_stats,
                                      channel_axis=self.channel_axis, n_threads=self.n_threads)

    def recompute_running_stats(self, batches: Iterable):
        """Set the running statistics to the average, over every instance of
        every batch, of the per-instance mean and unbiased variance;
        num_batches_tracked = the number of batches. Nothing is written if a
        batch is rejected. Returns self."""
        self._need_running("recompute_running_stats")
        sum_mean = np.zeros(self.num_features)
        sum_var = np.zeros(self.num_features)
        instances = nbatches = 0
        for x in batches:
            _, saved, hw = self._stats(self._input(x))
            sum_mean += saved.mean.sum(axis=0, dtype=np.float64)
            sum_var += saved.var.sum(axis=0, dtype=np.float64) * (hw / (hw - 1))
            instances += saved.mean.shape[0]
            nbatches += 1
        if not nbatches:
            raise ValueError("recompute_running_stats needs at least one batch")
        self._commit_population(sum_mean / instances, sum_var / instances, nbatches)
        return self


class GroupNorm(_Layer):
    """Group normalization layer (PyTorch's nn.GroupNorm).

    GroupNorm(num_groups, num_channels, eps=1e-5, affine=True, *,
    channel_axis=1, dtype=np.float32, n_threads=None); channel_axis 1 or -1
    (channels last, used as it is). Statistics per (sample, group): the same
    in training and eval.
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, channel_axis=1,
                 dtype=np.float32, n_threads=None):
        self._init_common(dtype, n_threads)
        self.num_groups = _positive_int(num_groups, "num_groups")
        self.num_channels = _positive_int(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups "
                             f"({num_groups})")
        self.eps = _eps(eps)
        self.affine = bool(affine)
        if channel_axis not in (1, -1) or isinstance(channel_axis, (bool, np.bool_)):
            raise ValueError(f"channel_axis must be 1 or -1, got {channel_axis!r}")
        self.channel_axis = int(channel_axis)
        C = self.num_channels
        self.weight = np.ones(C, self.dtype) if self.affine else None
        self.bias = np.zeros(C, self.dtype) if self.affine else None

    def _config(self):
        return dict(num_groups=self.num_groups, num_channels=self.num_channels, eps=self.eps,
                    affine=self.affine, channel_axis=self.channel_axis, dtype=self.dtype,
                    n_threads=self.n_threads)

    def forward(self, x):
        """y = group norm of x."""
        xa = self._input(x)
        self._channels(xa, self.channel_axis, self.num_channels, "num_channels")
        y, saved = group_norm_forward(xa, self.num_groups, self.weight, self.bias,
                                      channel_axis=self.channel_axis, eps=self.eps,
                                      n_threads=self.n_threads)
        self._cache = _Cache(xa, saved, True)
        return y

    def _backward(self, cache, g):
        return group_norm_backward(g, cache.x, self.num_groups, self.weight, cache.saved,
                                   channel_axis=self.channel_axis, n_threads=self.n_threads)


class _RowNorm(_Layer):
    """Layer and RMS norm: statistics over the trailing normalized_shape."""

    def _init_rows(self, normalized_shape, eps, elementwise_affine, bias, dtype, n_threads,
                   rms):
        self._init_common(dtype, n_threads)
        if isinstance(normalized_shape, Integral) and not isinstance(normalized_shape, bool):
            normalized_shape = (normalized_shape,)
        try:
            shape = tuple(_positive_int(d, "normalized_shape") for d in normalized_shape)
        except TypeError:
            raise TypeError("normalized_shape must be an int or a tuple of ints, got "
                            f"{normalized_shape!r}") from None
        if not shape:
            raise ValueError("normalized_shape must not be empty")
        self.normalized_shape = shape
        self.eps = _eps(eps, allow_none=rms)
        self.elementwise_affine = bool(elementwise_affine)
        self.weight = np.ones(shape, self.dtype) if self.elementwise_affine else None
        self.bias = (np.zeros(shape, self.dtype) if self.elementwise_affine and bias
                     else None)
        self._rms = rms

    def _rows(self, x):
        xa = self._input(x)
        k = len(self.normalized_shape)
        if xa.shape[xa.ndim - k:] != self.normalized_shape or xa.ndim < k:
            raise ValueError(f"x must end with normalized_shape {self.normalized_shape}, "
                             f"got shape {xa.shape}")
        return xa, -k

    def forward(self, x):
        """y = the normalization of x over its trailing normalized_shape axes."""
        xa, axis = self._rows(x)
        if self._rms:
            fn, affine = rms_norm_forward, (self.weight,)
        else:
            fn, affine = layer_norm_forward, (self.weight, self.bias)
        y, saved = fn(xa, *affine, axis=axis, eps=self.eps, n_threads=self.n_threads)
        self._cache = _Cache(xa, saved, True)
        return y

    def _backward(self, cache, g):
        fn = rms_norm_backward if self._rms else layer_norm_backward
        return fn(g, cache.x, self.weight, cache.saved, axis=-len(self.normalized_shape),
                  n_threads=self.n_threads)


class LayerNorm(_RowNorm):
    """Layer normalization layer (PyTorch's nn.LayerNorm).

    LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
    *, dtype=np.float32, n_threads=None): normalizes over the trailing axes
    normalized_shape (an int or a tuple); weight and bias have that shape.
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, *,
                 dtype=np.float32, n_threads=None):
        self._init_rows(normalized_shape, eps, elementwise_affine, bias, dtype, n_threads,
                        False)

    def _config(self):
        return dict(normalized_shape=self.normalized_shape, eps=self.eps,
                    elementwise_affine=self.elementwise_affine,
                    bias=self.bias is not None or not self.elementwise_affine,
                    dtype=self.dtype, n_threads=self.n_threads)


class RMSNorm(_RowNorm):
    """RMS normalization layer (PyTorch's nn.RMSNorm).

    RMSNorm(normalized_shape, eps=None, elementwise_affine=True, *,
    dtype=np.float32, n_threads=None); eps=None is the machine epsilon of the
    computing dtype, as in PyTorch. No bias (``bias`` is None).
    """

    _PARAMS = ("weight",)

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, *,
                 dtype=np.float32, n_threads=None):
        self._init_rows(normalized_shape, eps, elementwise_affine, False, dtype, n_threads,
                        True)

    def _config(self):
        return dict(normalized_shape=self.normalized_shape, eps=self.eps,
                    elementwise_affine=self.elementwise_affine, dtype=self.dtype,
                    n_threads=self.n_threads)
