"""bnc.layers: the stateful layers against the functional API and the float64
NumPy oracle (bnc.reference), modes, gradients, state dicts, pickling,
population statistics and ghost batch norm."""
import copy
import pickle

import numpy as np
import pytest

import bnc
from bnc import layers as L
from bnc import reference as ref
from conftest import assert_close, bit_equal, rng_for
from layer_helpers import make_layers

F32 = np.float32


def _x(shape, dtype=F32, *key, loc=0.5, scale=2.0):
    return (loc + scale * rng_for("layers", shape, *key).standard_normal(shape)).astype(dtype)


def _randomize(layer, *key):
    rng = rng_for("params", *key)
    for n, p in layer.parameters().items():
        p[...] = rng.uniform(0.5, 1.5, p.shape) * rng.choice([-1, 1], p.shape)


# -- batch norm against the functional API and the oracle ------------------------

@pytest.mark.parametrize("momentum", [0.1, None, 0.7])
@pytest.mark.parametrize("shape,axis", [((6, 4, 5, 3), 1), ((6, 5, 3, 4), -1), ((9, 4), 1)])
def test_batchnorm_train_equals_functional(shape, axis, momentum):
    C = shape[axis]
    layer = L.BatchNorm(C, momentum=momentum, channel_axis=axis)
    _randomize(layer, shape)
    w, b = layer.weight.copy(), layer.bias.copy()
    rm, rv, nbt = np.zeros(C, F32), np.ones(C, F32), np.array(0, np.int64)
    gw = gb = 0.0
    for step in range(3):
        x = _x(shape, F32, step)
        g = _x(shape, F32, "g", step)
        y = layer(x)
        y_f = bnc.batch_norm(x, w, b, rm, rv, training=True, momentum=momentum,
                             channel_axis=axis, num_batches_tracked=nbt)
        assert bit_equal(y, y_f)
        assert bit_equal(layer.running_mean, rm) and bit_equal(layer.running_var, rv)
        assert layer.num_batches_tracked == nbt == step + 1
        dx = layer.backward(g)
        dx_f, dw, db = bnc.batch_norm_backward(g, x, w, bnc.batch_norm_forward(
            x, w, b, channel_axis=axis)[1], channel_axis=axis)
        assert bit_equal(dx, dx_f)
        gw, gb = gw + dw, gb + db
        assert bit_equal(layer.grad_weight, gw) and bit_equal(layer.grad_bias, gb)


@pytest.mark.parametrize("dtype,xdtype", [(np.float64, np.float64), (F32, F32),
                                          (F32, np.float16)])
def test_batchnorm_against_reference(dtype, xdtype):
    C, shape = 5, (7, 5, 6)
    layer = L.BatchNorm(C, momentum=0.3, dtype=dtype)
    _randomize(layer, "ref")
    rm, rv = np.zeros(C), np.ones(C)
    tol = {np.float64: 1e-12, F32: 1e-5, np.float16: 1e-3}[xdtype]
    for step in range(2):
        x = _x(shape, xdtype, step)
        y = layer(x)
        assert y.dtype == xdtype
        y_r = ref.batch_norm(x, layer.weight, layer.bias, rm, rv, training=True,
                             momentum=0.3)
        assert_close(y, y_r, tol, "y")
        assert_close(layer.running_mean, rm, 1e-12 if dtype == np.float64 else 1e-6)
        assert_close(layer.running_var, rv, 1e-12 if dtype == np.float64 else 1e-6)
    layer.eval()
    x = _x(shape, xdtype, "eval")
    g = _x(shape, xdtype, "geval")
    assert_close(layer(x), ref.batch_norm(x, layer.weight, layer.bias, rm, rv), tol)
    dx = layer.backward(g)
    r = ref.batch_norm_backward(g, x, layer.weight, ref.batch_norm_forward(
        x, mean=rm, var=rv)[1], use_batch_stats=False)
    assert_close(dx, r.grad_input, tol)
    assert_close(layer.grad_weight, r.grad_weight, 1e-5 if dtype == F32 else 1e-12)
    assert_close(layer.grad_bias, r.grad_bias, 1e-5 if dtype == F32 else 1e-12)


def test_eval_uses_running_stats_and_leaves_them():
    layer = L.BatchNorm(3)
    layer.running_mean[...] = [1, 2, 3]
    layer.running_var[...] = [4, 5, 6]
    layer.eval()
    x = _x((4, 3, 2))
    y = layer(x)
    assert_close(y, ref.batch_norm(x, None, None, [1, 2, 3], [4, 5, 6]), 1e-6)
    assert layer.num_batches_tracked == 0
    assert list(layer.running_mean) == [1, 2, 3]


def test_no_running_stats_uses_batch_stats_in_eval():
    layer = L.BatchNorm(3, track_running_stats=False, affine=False).eval()
    assert layer.running_mean is None and layer.weight is None
    x = _x((4, 3, 2))
    assert_close(layer(x), ref.batch_norm_forward(x)[0], 1e-5)
    dx = layer.backward(np.ones_like(x))
    assert layer.grad_weight is None and dx.shape == x.shape
    assert list(layer.state_dict()) == []
    with pytest.raises(ValueError, match="freeze\\(\\) needs running statistics"):
        layer.freeze()


def test_freeze():
    layer = L.BatchNorm(4)
    _randomize(layer, "freeze")
    layer.running_mean[...] = [0.1, -0.2, 0.3, 0.0]
    layer.running_var[...] = [1.5, 0.5, 2.0, 1.0]
    before = layer.state_dict()
    assert layer.freeze() is layer and layer.frozen and layer.training
    x, g = _x((6, 4, 3)), _x((6, 4, 3), F32, "g")
    y = layer(x)
    for k, v in layer.state_dict().items():
        assert bit_equal(v, before[k]), f"{k} changed while frozen"
    y_eval = copy.deepcopy(layer).freeze(False).eval()(x)
    assert bit_equal(y, y_eval)
    dx = layer.backward(g)
    r = ref.batch_norm_backward(g, x, layer.weight, ref.batch_norm_forward(
        x, mean=layer.running_mean, var=layer.running_var)[1], use_batch_stats=False)
    assert_close(dx, r.grad_input, 1e-5)
    assert_close(layer.grad_weight, r.grad_weight, 1e-5)
    layer.freeze(False)
    layer(x)
    assert layer.num_batches_tracked == 1


def test_batchrenorm_equals_functional():
    C, shape = 4, (8, 4, 3)
    layer = L.BatchRenorm(C, rmax=1.5, dmax=0.3, momentum=0.2)
    _randomize(layer, "renorm")
    w, b = layer.weight.copy(), layer.bias.copy()
    rm, rv, nbt = np.zeros(C, F32), np.ones(C, F32), np.array(0, np.int64)
    gw = 0.0
    for step in range(3):
        x, g = _x(shape, F32, "r", step), _x(shape, F32, "rg", step)
        _, saved = bnc.batch_renorm_forward(x, w, b, rm, rv, rmax=1.5, dmax=0.3)
        y_f = bnc.batch_renorm(x, w, b, rm, rv, training=True, rmax=1.5, dmax=0.3,
                               momentum=0.2, num_batches_tracked=nbt)
        y = layer(x)
        assert bit_equal(y, y_f)
        assert bit_equal(layer.running_mean, rm) and bit_equal(layer.running_var, rv)
        dx = layer.backward(g)
        dx_f, dw, _ = bnc.batch_renorm_backward(g, x, w, saved)
        gw = gw + dw
        assert bit_equal(dx, dx_f) and bit_equal(layer.grad_weight, gw)
    layer.eval()
    x = _x(shape, F32, "reval")
    assert bit_equal(layer(x), bnc.batch_norm(x, w, b, rm, rv))


# -- the other families ------------------------------------------------------------

def test_groupnorm_layernorm_rmsnorm_against_reference():
    x = _x((3, 6, 4, 5), np.float64)
    g = _x((3, 6, 4, 5), np.float64, "g")
    gn = L.GroupNorm(3, 6, dtype=np.float64)
    ln = L.LayerNorm((4, 5), dtype=np.float64)
    rms = L.RMSNorm(5, eps=1e-6, dtype=np.float64)
    for layer in (gn, ln, rms):
        _randomize(layer, type(layer).__name__)
    cases = [
        (gn, lambda: ref.group_norm_forward(x, 3, gn.weight, gn.bias),
         lambda s: ref.group_norm_backward(g, x, 3, gn.weight, s)),
        (ln, lambda: ref.layer_norm_forward(x, ln.weight, ln.bias, axis=-2),
         lambda s: ref.layer_norm_backward(g, x, ln.weight, s, axis=-2)),
        (rms, lambda: ref.rms_norm_forward(x, rms.weight, eps=1e-6),
         lambda s: ref.rms_norm_backward(g, x, rms.weight, s)),
    ]
    for layer, fwd, bwd in cases:
        for mode in ("train", "eval"):
            getattr(layer, mode)()
            y_r, s = fwd()
            assert_close(layer(x), y_r, 1e-12, f"{layer!r} y")
            r = bwd(s)
            assert_close(layer.backward(g), r.grad_input, 1e-12)
        assert_close(layer.grad_weight, 2 * r.grad_weight, 1e-12)
        if layer is not rms:
            assert_close(layer.grad_bias, 2 * r.grad_bias, 1e-12)
        else:
            assert layer.bias is None and layer.grad_bias is None
            assert list(layer.state_dict()) == ["weight"]


def test_instancenorm_running_stats_against_reference():
    C = 4
    layer = L.InstanceNorm(C, affine=True, track_running_stats=True, momentum=0.25,
                           channel_axis=-1, dtype=np.float64)
    _randomize(layer, "in")
    rm, rv, nbt = np.zeros(C), np.ones(C), np.array(0, np.int64)
    for step in range(2):
        x = _x((3, 5, 2, C), np.float64, "in", step)
        y = layer(x)
        y_r = ref.instance_norm(x, layer.weight, layer.bias, rm, rv, momentum=0.25,
                                channel_axis=-1, num_batches_tracked=nbt)
        assert_close(y, y_r, 1e-12)
        assert_close(layer.running_mean, rm, 1e-12)
        assert_close(layer.running_var, rv, 1e-12)
        assert layer.num_batches_tracked == step + 1
    x = _x((2, 5, 2, C), np.float64, "ineval")
    frozen = copy.deepcopy(layer).freeze()
    y_frozen = frozen(x)
    assert frozen.num_batches_tracked == 2 and bit_equal(frozen.running_var, rv)
    layer.eval()
    assert bit_equal(layer(x), y_frozen)
    assert_close(layer(x), ref.instance_norm(x, layer.weight, layer.bias, rm, rv,
                                             use_input_stats=False, channel_axis=-1), 1e-12)
    g = np.ones_like(x)
    dx = layer.backward(g)
    assert_close(dx, g * (layer.weight / np.sqrt(rv + 1e-5)), 1e-12)


def test_instancenorm_without_running_stats_is_per_instance_in_eval():
    layer = L.InstanceNorm(3).eval()
    x = _x((2, 3, 6), np.float32)
    assert_close(layer(x), ref.instance_norm(x), 1e-5)
    with pytest.raises(ValueError, match="needs running statistics"):
        layer.recompute_running_stats([x])


# -- gradients, backward protocol ---------------------------------------------------

def test_backward_protocol_and_zero_grad():
    layer = L.BatchNorm(3)
    with pytest.raises(RuntimeError, match="needs a forward\\(\\) first"):
        layer.backward(np.ones((2, 3)))
    x = _x((4, 3))
    layer(x)
    with pytest.raises(ValueError, match="grad_out must have the forward input's shape"):
        layer.backward(np.ones((4, 2), F32))
    layer.backward(np.ones_like(x))  # the failed call kept the cache
    with pytest.raises(RuntimeError, match="each forward allows one backward"):
        layer.backward(np.ones_like(x))
    assert layer.grad_weight is not None
    layer.zero_grad(set_to_none=False)
    assert np.all(layer.grad_weight == 0) and layer.grad_weight.dtype == F32
    layer.zero_grad()
    assert layer.grad_weight is None and layer.grad_bias is None
    assert layer.grads() == {"weight": None, "bias": None}


def test_parameters_are_live_and_an_sgd_step_works():
    layer = L.LayerNorm(4)
    w = layer.weight
    assert layer.parameters()["weight"] is w
    x, g = _x((5, 4)), _x((5, 4), F32, "g")
    layer(x)
    layer.backward(g)
    for name, p in layer.parameters().items():
        p -= 0.1 * layer.grads()[name]
    assert layer.weight is w and not np.all(w == 1)


def test_reset():
    layer = L.BatchNorm(3)
    _randomize(layer, "reset")
    layer(_x((4, 3)))
    layer.reset_running_stats()
    assert list(layer.running_mean) == [0, 0, 0] and list(layer.running_var) == [1, 1, 1]
    assert layer.num_batches_tracked == 0 and layer.num_batches_tracked.dtype == np.int64
    layer.reset_parameters()
    assert list(layer.weight) == [1, 1, 1] and list(layer.bias) == [0, 0, 0]


# -- input and constructor checks ----------------------------------------------------

def test_input_errors():
    layer = L.BatchNorm(3)
    with pytest.raises(TypeError, match="dtype float32 takes float16 or float32 input, "
                                        "got float64"):
        layer(np.ones((4, 3)))
    with pytest.raises(TypeError, match="takes float64 input, got float32"):
        L.BatchNorm(3, dtype=np.float64)(np.ones((4, 3), F32))
    with pytest.raises(ValueError, match="x has 4 channels at channel_axis=1, the layer has "
                                         "num_features=3"):
        layer(np.ones((4, 4), F32))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        layer(np.ones(3, F32))
    with pytest.raises(np.exceptions.AxisError):
        L.BatchNorm(3, channel_axis=3)(np.ones((4, 3), F32))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        layer(np.ones((1, 3), F32))
    with pytest.raises(ValueError, match="x must end with normalized_shape \\(4,\\)"):
        L.LayerNorm(4)(np.ones((2, 3), F32))
    with pytest.raises(ValueError, match="num_channels"):
        L.GroupNorm(2, 4, channel_axis=-1)(np.ones((2, 3, 5), F32))


@pytest.mark.parametrize("make,exc,msg", [
    (lambda: L.BatchNorm(0), ValueError, "num_features must be >= 1"),
    (lambda: L.BatchNorm(2.0), TypeError, "num_features must be an int"),
    (lambda: L.BatchNorm(2, eps=0), ValueError, "eps must be a finite number > 0"),
    (lambda: L.BatchNorm(2, momentum=1.5), ValueError, "momentum must be in \\[0, 1\\], got 1.5"),
    (lambda: L.BatchNorm(2, momentum="a"), TypeError, "momentum must be a real number"),
    (lambda: L.BatchNorm(2, dtype=np.float16), TypeError, "float32 \\(float16/float32 input"),
    (lambda: L.BatchNorm(2, dtype=np.int32), TypeError, "dtype is the dtype"),
    (lambda: L.BatchNorm(2, correction=-1), ValueError, "correction must be >= 0"),
    (lambda: L.BatchNorm(2, virtual_batch_size=0), ValueError, "virtual_batch_size must"),
    (lambda: L.BatchNorm(2, channel_axis=0, virtual_batch_size=4), ValueError,
     "splits axis 0"),
    (lambda: L.GroupNorm(3, 4), ValueError, "divisible by num_groups"),
    (lambda: L.GroupNorm(2, 4, channel_axis=2), ValueError, "channel_axis must be 1 or -1"),
    (lambda: L.LayerNorm(()), ValueError, "normalized_shape must not be empty"),
    (lambda: L.LayerNorm("a"), TypeError, "normalized_shape must be an int or a tuple"),
    (lambda: L.RMSNorm(4, eps=-1.0), ValueError, "eps must be"),
])
def test_constructor_errors(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


def test_repr():
    r = repr(L.BatchNorm(3).eval().freeze())
    assert r.startswith("BatchNorm(num_features=3, eps=1e-05, momentum=0.1,")
    assert "dtype=float32" in r and r.endswith("[eval, frozen]")


# -- state dicts -------------------------------------------------------------------

def test_state_dict_copies_and_order():
    layer = L.BatchNorm(3)
    sd = layer.state_dict()
    assert list(sd) == ["weight", "bias", "running_mean", "running_var",
                        "num_batches_tracked"]
    assert sd["num_batches_tracked"].shape == () and sd["num_batches_tracked"].dtype == np.int64
    sd["weight"][...] = 5
    assert np.all(layer.weight == 1)


def test_load_state_dict_in_place_and_cast():
    a, b = L.BatchNorm(3, dtype=np.float64), L.BatchNorm(3)
    _randomize(a, "load")
    a(_x((5, 3), np.float64))
    ids = {n: id(getattr(b, n)) for n in b.state_dict()}
    res = b.load_state_dict(a.state_dict())
    assert res == L.IncompatibleKeys([], [])
    for n, v in a.state_dict().items():
        assert id(getattr(b, n)) == ids[n]
        assert getattr(b, n).dtype == (np.int64 if n == "num_batches_tracked" else F32)
        assert np.array_equal(getattr(b, n), v.astype(getattr(b, n).dtype))
    sd = a.state_dict()
    sd["weight"] = sd["weight"].tolist()  # lists are array-likes too
    b.load_state_dict(sd)


def test_load_state_dict_strictness():
    layer = L.BatchNorm(3)
    sd = layer.state_dict()
    del sd["bias"]
    sd["extra"] = np.zeros(3)
    with pytest.raises(ValueError, match="missing key\\(s\\) 'bias'; unexpected key\\(s\\) "
                                         "'extra'"):
        layer.load_state_dict(sd)
    sd["weight"] = np.full(3, 2.0)
    res = layer.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["bias"] and res.unexpected_keys == ["extra"]
    assert np.all(layer.weight == 2)
    # a missing num_batches_tracked keeps the count (PyTorch's rule for old checkpoints)
    layer.num_batches_tracked[...] = 7
    sd = layer.state_dict()
    del sd["num_batches_tracked"]
    sd["running_mean"] = np.ones(3)
    assert layer.load_state_dict(sd).missing_keys == ["num_batches_tracked"]
    assert layer.num_batches_tracked == 7 and np.all(layer.running_mean == 1)


@pytest.mark.parametrize("key,value,exc,msg", [
    ("weight", np.zeros(4), ValueError, "state_dict\\['weight'\\] has shape \\(4,\\)"),
    ("weight", np.zeros((3, 1)), ValueError, "has shape \\(3, 1\\)"),
    ("running_var", np.zeros(3, complex), TypeError, "must hold real numbers"),
    ("running_var", np.array(["a", "b", "c"]), TypeError, "must hold real numbers"),
    ("bias", np.zeros(3, bool), TypeError, "must hold real numbers"),
    ("num_batches_tracked", np.array(1.0), TypeError, "must be an integer"),
    ("num_batches_tracked", np.array([1]), ValueError, "must be 0-d"),
    ("num_batches_tracked", np.array(-1), ValueError, "must be >= 0"),
    ("num_batches_tracked", np.array(2**64 - 1, np.uint64), ValueError, "too large"),
])
def test_load_state_dict_errors(key, value, exc, msg):
    layer = L.BatchNorm(3)
    sd = {k: v + 1 for k, v in layer.state_dict().items()}
    sd[key] = value
    with pytest.raises(exc, match=msg):
        layer.load_state_dict(sd)
    with pytest.raises(exc, match=msg):
        layer.load_state_dict(sd, strict=False)


def test_load_state_dict_not_a_mapping():
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        L.LayerNorm(3).load_state_dict([("weight", np.ones(3))])


def test_load_state_dict_drops_the_cache():
    layer = L.GroupNorm(1, 2)
    layer(_x((2, 2, 3)))
    layer.load_state_dict(layer.state_dict())
    with pytest.raises(RuntimeError):
        layer.backward(np.ones((2, 2, 3), F32))


# -- pickling ---------------------------------------------------------------------

@pytest.mark.parametrize("name", list(make_layers()))
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickle_round_trip(name, how):
    layer, x = make_layers()[name]
    layer.eval()
    clone = pickle.loads(pickle.dumps(layer)) if how == "pickle" else copy.deepcopy(layer)
    assert type(clone) is type(layer) and repr(clone) == repr(layer)
    assert clone._config() == layer._config()
    for k, v in layer.state_dict().items():
        assert bit_equal(clone.state_dict()[k], v)
    for k, v in layer.grads().items():
        assert bit_equal(clone.grads()[k], v)
    assert clone._cache is None
    with pytest.raises(RuntimeError):
        clone.backward(np.ones_like(x))
    assert bit_equal(clone(x), layer(x))
    clone.train()
    if getattr(clone, "running_var", None) is not None:
        clone(x)
        assert clone.num_batches_tracked == layer.num_batches_tracked + 1


# -- population statistics ------------------------------------------------------------

def _pooled(batches, channel_axis, correction=1):
    """float64 mean and variance of every value of the batches, per channel."""
    moved = [np.moveaxis(np.asarray(b, np.float64), channel_axis, -1) for b in batches]
    C = moved[0].shape[-1]
    allv = np.concatenate([m.reshape(-1, C) for m in moved])
    n = allv.shape[0]
    return allv.mean(axis=0), allv.var(axis=0) * n / (n - correction)


@pytest.mark.parametrize("cls", [L.BatchNorm, L.BatchRenorm])
@pytest.mark.parametrize("axis,correction", [(1, 1), (-1, 0)])
def test_recompute_running_stats(cls, axis, correction):
    shapes = [(8, 3, 5), (1, 3, 5), (5, 3, 5)] if axis == 1 else [(8, 5, 3), (1, 5, 3)]
    batches = [_x(s, F32, "pop", i, loc=1e3, scale=3.0) for i, s in enumerate(shapes)]
    layer = cls(3, channel_axis=axis, correction=correction)
    layer.eval()
    grads_before = layer.grads()
    out = layer.recompute_running_stats(b for b in batches)  # a generator is enough
    assert out is layer and not layer.training
    mean, var = _pooled(batches, axis, correction)
    assert_close(layer.running_mean, mean, 1e-7)
    assert_close(layer.running_var, var, 1e-5)
    assert layer.num_batches_tracked == len(batches)
    assert layer.grads() == grads_before
    d = L.BatchNorm(3, channel_axis=axis, dtype=np.float64)
    d.recompute_running_stats([b.astype(np.float64) for b in batches])
    assert_close(d.running_var, _pooled(batches, axis)[1], 1e-12)


def test_recompute_running_stats_errors():
    layer = L.BatchNorm(3)
    with pytest.raises(ValueError, match="needs at least one batch"):
        layer.recompute_running_stats([])
    with pytest.raises(ValueError, match="need more than correction=1"):
        layer.recompute_running_stats([np.ones((1, 3), F32)])
    with pytest.raises(ValueError, match="needs running statistics"):
        L.BatchNorm(3, track_running_stats=False).recompute_running_stats([np.ones((2, 3))])


def test_instancenorm_recompute_running_stats():
    layer = L.InstanceNorm(3, track_running_stats=True, dtype=np.float64)
    batches = [_x((2, 3, 4, 5), np.float64, "ipop"), _x((3, 3, 2, 2), np.float64, "ipop2")]
    layer.recompute_running_stats(batches)
    means, variances = [], []
    for b in batches:
        flat = b.reshape(b.shape[0], 3, -1)
        means.append(flat.mean(axis=2))
        variances.append(flat.var(axis=2, ddof=1))
    assert_close(layer.running_mean, np.concatenate(means).mean(axis=0), 1e-12)
    assert_close(layer.running_var, np.concatenate(variances).mean(axis=0), 1e-12)
    assert layer.num_batches_tracked == 2


# -- ghost batch norm ------------------------------------------------------------

def _ghost_reference(x, w, b, rm, rv, V, momentum, correction, eps=1e-5):
    """float64 NumPy twin: consecutive slices of V samples, each normalized with its
    own statistics; one running update with the size-weighted means of the slices'
    means and corrected variances."""
    x = x.astype(np.float64)
    y = np.empty_like(x)
    ms, vs, ns = [], [], []
    shape = (1, -1) + (1,) * (x.ndim - 2)
    for s in range(0, x.shape[0], V):
        xs = x[s:s + V]
        axes = (0,) + tuple(range(2, x.ndim))
        m, v = xs.mean(axis=axes), xs.var(axis=axes)
        n = xs.size // xs.shape[1]
        y[s:s + V] = (xs - m.reshape(shape)) / np.sqrt(v.reshape(shape) + eps) * \
            w.reshape(shape) + b.reshape(shape)
        ms.append(m)
        vs.append(v * n / (n - correction))
        ns.append(n)
    ns = np.asarray(ns, np.float64)[:, None]
    mean = (ns * ms).sum(axis=0) / ns.sum()
    var = (ns * vs).sum(axis=0) / ns.sum()
    return y, (1 - momentum) * rm + momentum * mean, (1 - momentum) * rv + momentum * var


@pytest.mark.parametrize("N,V", [(12, 4), (10, 4), (9, 3), (4, 8)])
def test_ghost_batchnorm_against_numpy(N, V, monkeypatch):
    C, shape = 3, (N, 3, 5)
    layer = L.BatchNorm(C, momentum=0.2, virtual_batch_size=V, dtype=np.float64)
    _randomize(layer, "ghost")
    rm, rv = layer.running_mean.copy(), layer.running_var.copy()
    calls = []
    real = L.batch_norm_forward

    def counting(x, *a, **k):
        calls.append(np.asarray(x).shape[0])
        return real(x, *a, **k)

    monkeypatch.setattr(L, "batch_norm_forward", counting)
    for step in range(2):
        x = _x(shape, np.float64, "ghost", step)
        y = layer(x)
        y_r, rm, rv = _ghost_reference(x, layer.weight, layer.bias, rm, rv, V, 0.2, 1)
        assert_close(y, y_r, 1e-12)
        assert_close(layer.running_mean, rm, 1e-12)
        assert_close(layer.running_var, rv, 1e-12)
        assert layer.num_batches_tracked == step + 1
    # one kernel call per virtual batch, each on its own slice
    sizes = [min(V, N - s) for s in range(0, N, V)]
    assert calls == sizes * 2
    # backward: per slice, as the oracle's batch norm backward on each slice
    g = _x(shape, np.float64, "ghostg")
    dx = layer.backward(g)
    gw = np.zeros(C)
    for s in range(0, N, V):
        r = ref.batch_norm_backward(g[s:s + V], x[s:s + V], layer.weight,
                                    ref.batch_norm_forward(x[s:s + V])[1])
        assert_close(dx[s:s + V], r.grad_input, 1e-12)
        gw += r.grad_weight
    assert_close(layer.grad_weight, gw, 1e-12)
    # eval: the running statistics, no slices
    calls.clear()
    layer.eval()
    assert_close(layer(x), ref.batch_norm(x, layer.weight, layer.bias, rm, rv), 1e-12)
    assert calls == [N]


def test_ghost_with_one_slice_is_batch_norm():
    a = L.BatchNorm(3, virtual_batch_size=8)
    b = L.BatchNorm(3)
    for step in range(2):
        x = _x((8, 3, 4), F32, "one", step)
        assert bit_equal(a(x), b(x))
        assert bit_equal(a.backward(x), b.backward(x))
    assert_close(a.running_var, b.running_var, 1e-6)
    assert bit_equal(a.running_mean, b.running_mean)


def test_ghost_matches_keras_semantics():
    """Keras' BatchNormalization(virtual_batch_size=V, momentum=d, axis=-1) in NumPy
    (its reshape to (V, N/V, C) and its one moving-average update with the mean of
    the ghost batches' means and biased variances), against bnc with the batch
    permuted so that Keras' ghost batch j is bnc's slice j, correction=0 and
    momentum = 1 - d."""
    N, V, C, decay, eps = 12, 4, 5, 0.9, 1e-3
    x = _x((N, C), np.float64, "keras")
    gamma = rng_for("gamma").uniform(0.5, 1.5, C)
    beta = rng_for("beta").standard_normal(C)
    mm, mv = np.zeros(C), np.ones(C)
    # Keras, transcribed
    xr = x.reshape(V, N // V, C)
    mean = xr.mean(axis=0, keepdims=True)
    var = xr.var(axis=0, keepdims=True)
    y_keras = ((xr - mean) / np.sqrt(var + eps) * gamma + beta).reshape(N, C)
    mm = mm * decay + mean.mean(axis=1)[0] * (1 - decay)
    mv = mv * decay + var.mean(axis=1)[0] * (1 - decay)
    # bnc
    layer = L.BatchNorm(C, eps=eps, momentum=1 - decay, correction=0, channel_axis=-1,
                        virtual_batch_size=V, dtype=np.float64)
    layer.weight[...] = gamma
    layer.bias[...] = beta
    perm = np.arange(N).reshape(V, N // V).T.reshape(N)  # Keras' ghost j, consecutively
    y = np.empty_like(x)
    y[perm] = layer(x[perm])
    assert_close(y, y_keras, 1e-12)
    assert_close(layer.running_mean, mm, 1e-12)
    assert_close(layer.running_var, mv, 1e-12)


def test_ghost_errors():
    layer = L.BatchNorm(3, virtual_batch_size=4)
    with pytest.raises(ValueError, match="virtual batches of 4 samples leave 1 value\\(s\\) "
                                         "per channel in one: need more than correction=1"):
        layer(_x((9, 3)))  # the last slice has one sample
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        L.BatchNorm(3, virtual_batch_size=4, track_running_stats=False)(_x((9, 3)))
    with pytest.raises(ValueError, match="splits axis 0"):
        L.BatchNorm(3, virtual_batch_size=2, channel_axis=-2)(_x((3, 6)))


def test_exports():
    assert "layers" in bnc.__all__ and bnc.layers is L
    for name in ("BatchNorm", "BatchRenorm", "GroupNorm", "InstanceNorm", "LayerNorm",
                 "RMSNorm", "IncompatibleKeys"):
        assert name in L.__all__ and hasattr(L, name)


@pytest.mark.parametrize("xdtype", [F32, np.float16])
def test_ghost_batchnorm_channels_last_and_float16(xdtype):
    N, V, C = 10, 4, 3
    layer = L.BatchNorm(C, momentum=0.5, virtual_batch_size=V, channel_axis=-1)
    _randomize(layer, "ghost-cl")
    rm, rv = layer.running_mean.astype(np.float64), layer.running_var.astype(np.float64)
    x = _x((N, 4, 2, C), xdtype, "ghost-cl")
    y = layer(x)
    assert y.dtype == xdtype and y.shape == x.shape
    y_r, rm, rv = _ghost_reference(np.moveaxis(x, -1, 1), layer.weight, layer.bias, rm, rv,
                                   V, 0.5, 1)
    assert_close(y, np.moveaxis(y_r, 1, -1), 1e-3 if xdtype == np.float16 else 1e-5)
    assert_close(layer.running_mean, rm, 1e-6)
    assert_close(layer.running_var, rv, 1e-6)
    g = _x(x.shape, xdtype, "ghost-cl-g")
    dx = layer.backward(g)
    for s in range(0, N, V):
        r = ref.batch_norm_backward(g[s:s + V], x[s:s + V], layer.weight,
                                    ref.batch_norm_forward(x[s:s + V], channel_axis=-1)[1],
                                    channel_axis=-1)
        assert_close(dx[s:s + V], r.grad_input, 2e-3 if xdtype == np.float16 else 1e-5)
