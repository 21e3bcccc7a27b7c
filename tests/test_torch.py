"""bnc against PyTorch (API.md: "Same results as torch.nn.functional.batch_norm
with the same arguments"). Skipped when torch is not installed."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import bnc  # noqa: E402
from conftest import assert_close, make_params, make_x, norm_axis, rng_for  # noqa: E402

TCASES = [
    ((4, 3, 5, 6), 1),  # NCHW
    ((4, 5, 6, 3), -1),  # NHWC, compared with torch on the permuted (NCHW) view
    ((16, 5), 1),  # 2-D
    ((4, 3, 7), 1),  # 3-D
    ((2, 3, 3, 4, 5), 1),  # 5-D
    ((2, 3, 4, 5, 3), -1),  # 5-D channels last
    ((8, 16, 32, 32), 1),  # medium
]
TCASE_IDS = ["nchw", "nhwc", "2d", "3d", "5d", "5d-cl", "medium"]
TDTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-12}
GTOL = TOL

tcases = pytest.mark.parametrize("shape,channel_axis", TCASES, ids=TCASE_IDS)
tdtypes = pytest.mark.parametrize("dtype", TDTYPES, ids=["f32", "f64"])


def _t(a, requires_grad=False):
    t = torch.from_numpy(np.array(a, copy=True))
    return t.requires_grad_(requires_grad)


def _to_torch_layout(t, channel_axis):
    """Channels at dim 1, as torch expects (a view, not a copy)."""
    return t.movedim(norm_axis(channel_axis, t.ndim), 1)


def _from_torch_layout(t, channel_axis):
    return t.movedim(1, norm_axis(channel_axis, t.ndim)).detach().numpy()


def _data(shape, channel_axis, dtype, *key):
    rng = rng_for("torch", shape, channel_axis, np.dtype(dtype).name, *key)
    x = make_x(shape, dtype, rng, loc=1.5, scale=2.0)
    C = shape[norm_axis(channel_axis, len(shape))]
    return x, make_params(C, dtype, rng), rng


@tdtypes
@tcases
@pytest.mark.parametrize("momentum", [0.1, 0.0, 0.35, 1.0])
def test_train_forward_and_running_stats(shape, channel_axis, dtype, momentum):
    x, (w, b, rm, rv), _ = _data(shape, channel_axis, dtype)
    rm_t, rv_t = _t(rm), _t(rv)
    y_t = F.batch_norm(_to_torch_layout(_t(x), channel_axis), rm_t, rv_t, _t(w), _t(b),
                       training=True, momentum=momentum, eps=1e-5)
    y = bnc.batch_norm(x, w, b, rm, rv, training=True, momentum=momentum,
                       channel_axis=channel_axis)
    assert_close(y, _from_torch_layout(y_t, channel_axis), TOL[dtype], "y")
    assert_close(rm, rm_t.numpy(), TOL[dtype], "running_mean")
    assert_close(rv, rv_t.numpy(), TOL[dtype], "running_var")


@tdtypes
@tcases
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_eval_forward(shape, channel_axis, dtype, eps):
    x, (w, b, rm, rv), _ = _data(shape, channel_axis, dtype)
    y_t = F.batch_norm(_to_torch_layout(_t(x), channel_axis), _t(rm), _t(rv), _t(w), _t(b),
                       training=False, eps=eps)
    y = bnc.batch_norm(x, w, b, rm, rv, channel_axis=channel_axis, eps=eps)
    assert_close(y, _from_torch_layout(y_t, channel_axis), TOL[dtype])


@tdtypes
@pytest.mark.parametrize("affine", ["none", "weight", "bias"])
@pytest.mark.parametrize("training", [True, False])
def test_optional_affine(dtype, affine, training):
    x, (w, b, rm, rv), _ = _data((4, 3, 5), 1, dtype)
    w = w if affine == "weight" else None
    b = b if affine == "bias" else None
    wt = None if w is None else _t(w)
    bt = None if b is None else _t(b)
    y_t = F.batch_norm(_t(x), _t(rm), _t(rv), wt, bt, training=training)
    y = bnc.batch_norm(x, w, b, rm.copy(), rv.copy(), training=training)
    assert_close(y, y_t.numpy(), TOL[dtype])


def _module_for(ndim, C, dtype, momentum):
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
           5: torch.nn.BatchNorm3d}[ndim]
    return cls(C, momentum=momentum, dtype={np.float32: torch.float32,
                                            np.float64: torch.float64}[dtype])


@tdtypes
@tcases
@pytest.mark.parametrize("momentum", [None, 0.1])
def test_module_steps_with_num_batches_tracked(shape, channel_axis, dtype, momentum):
    """nn.BatchNorm over several steps (momentum=None: cumulative average)."""
    x, (w, b, _, _), rng = _data(shape, channel_axis, dtype, "module")
    C = w.shape[0]
    mod = _module_for(len(shape), C, dtype, momentum)
    with torch.no_grad():
        mod.weight.copy_(_t(w))
        mod.bias.copy_(_t(b))
    mod.train()
    rm = np.zeros(C, dtype)
    rv = np.ones(C, dtype)
    nbt = np.array(0, dtype=np.int64)
    for step in range(3):
        xs = make_x(shape, dtype, rng, loc=step, scale=1 + step)
        with torch.no_grad():
            y_t = mod(_to_torch_layout(_t(xs), channel_axis))
        y = bnc.batch_norm(xs, w, b, rm, rv, training=True, momentum=momentum,
                           num_batches_tracked=nbt, channel_axis=channel_axis)
        assert_close(y, _from_torch_layout(y_t, channel_axis), TOL[dtype], f"y step {step}")
        assert_close(rm, mod.running_mean.numpy(), TOL[dtype], f"running_mean step {step}")
        assert_close(rv, mod.running_var.numpy(), TOL[dtype], f"running_var step {step}")
        assert int(nbt) == int(mod.num_batches_tracked) == step + 1
    mod.eval()
    with torch.no_grad():
        y_t = mod(_to_torch_layout(_t(xs), channel_axis))
    y = bnc.batch_norm(xs, w, b, rm, rv, channel_axis=channel_axis, num_batches_tracked=nbt)
    assert_close(y, _from_torch_layout(y_t, channel_axis), TOL[dtype], "eval")
    assert int(nbt) == 3


@tdtypes
@tcases
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradients(shape, channel_axis, dtype, training):
    x, (w, b, rm, rv), rng = _data(shape, channel_axis, dtype, "grad")
    g = make_x(shape, dtype, rng)
    xt, wt, bt = _t(x, True), _t(w, True), _t(b, True)
    y_t = F.batch_norm(_to_torch_layout(xt, channel_axis), _t(rm), _t(rv), wt, bt,
                       training=training, eps=1e-5)
    y_t.backward(_to_torch_layout(_t(g), channel_axis))

    mean, var = (None, None) if training else (rm, rv)
    y, saved = bnc.batch_norm_forward(x, w, b, mean=mean, var=var, channel_axis=channel_axis)
    assert_close(y, _from_torch_layout(y_t, channel_axis), TOL[dtype], "y")
    gi, gw, gb = bnc.batch_norm_backward(g, x, w, saved, channel_axis=channel_axis,
                                         use_batch_stats=training)
    assert_close(gi, xt.grad.numpy(), GTOL[dtype], "grad_input")
    assert_close(gw, wt.grad.numpy(), GTOL[dtype], "grad_weight")
    assert_close(gb, bt.grad.numpy(), GTOL[dtype], "grad_bias")


@tdtypes
def test_gradients_without_weight(dtype):
    x, _, rng = _data((6, 4, 5), 1, dtype, "grad-nw")
    g = make_x(x.shape, dtype, rng)
    xt = _t(x, True)
    y_t = F.batch_norm(xt, None, None, None, None, training=True)
    y_t.backward(_t(g))
    _, saved = bnc.batch_norm_forward(x)
    gi, _, gb = bnc.batch_norm_backward(g, x, None, saved)
    assert_close(gi, xt.grad.numpy(), GTOL[dtype], "grad_input")
    assert_close(gb, g.sum(axis=(0, 2)), GTOL[dtype], "grad_bias")


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 2, 1, 1)])
def test_one_value_per_channel_message(shape):
    x = np.ones(shape, np.float32)
    with pytest.raises(ValueError) as torch_err:
        F.batch_norm(_t(x), None, None, training=True)
    with pytest.raises(ValueError) as bnc_err:
        bnc.batch_norm(x, training=True)
    prefix = "Expected more than 1 value per channel when training"
    assert str(torch_err.value).startswith(prefix)
    assert str(bnc_err.value).startswith(prefix)
