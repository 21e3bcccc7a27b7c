"""bnc.layers against PyTorch's modules: several training steps give the same
outputs, running statistics and accumulated gradients, eval agrees, and state
dicts go both ways (PyTorch's, converted with .numpy(), loads into bnc and
bnc's loads into PyTorch). Skipped when torch is not installed."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bnc import layers as L  # noqa: E402
from conftest import assert_close, rng_for  # noqa: E402

TOL = {np.float32: 2e-5, np.float64: 1e-12}


def _pairs(dtype):
    """name -> (torch module factory, bnc layer factory, input shape)."""
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    return {
        "BatchNorm2d": (lambda: torch.nn.BatchNorm2d(4, dtype=tdt),
                        lambda: L.BatchNorm(4, dtype=dtype), (6, 4, 5, 3)),
        "BatchNorm2d-cumulative": (lambda: torch.nn.BatchNorm2d(4, momentum=None, dtype=tdt),
                                   lambda: L.BatchNorm(4, momentum=None, dtype=dtype),
                                   (6, 4, 5, 3)),
        "BatchNorm1d": (lambda: torch.nn.BatchNorm1d(5, momentum=0.3, dtype=tdt),
                        lambda: L.BatchNorm(5, momentum=0.3, dtype=dtype), (16, 5)),
        "GroupNorm": (lambda: torch.nn.GroupNorm(2, 6, dtype=tdt),
                      lambda: L.GroupNorm(2, 6, dtype=dtype), (3, 6, 4, 5)),
        "InstanceNorm2d": (lambda: torch.nn.InstanceNorm2d(4, affine=True,
                                                           track_running_stats=True,
                                                           dtype=tdt),
                           lambda: L.InstanceNorm(4, affine=True, track_running_stats=True,
                                                  dtype=dtype), (3, 4, 5, 6)),
        "LayerNorm": (lambda: torch.nn.LayerNorm((5, 6), dtype=tdt),
                      lambda: L.LayerNorm((5, 6), dtype=dtype), (3, 4, 5, 6)),
        "LayerNorm-nobias": (lambda: torch.nn.LayerNorm(6, bias=False, dtype=tdt),
                             lambda: L.LayerNorm(6, bias=False, dtype=dtype), (3, 4, 6)),
        "RMSNorm": (lambda: torch.nn.RMSNorm(6, dtype=tdt),
                    lambda: L.RMSNorm(6, dtype=dtype), (3, 4, 6)),
    }


def _numpy_sd(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _randomize_torch(module, key):
    rng = rng_for("torch-layers", key)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, tuple(p.shape))))
        for name in ("running_mean", "running_var"):
            b = getattr(module, name, None)
            if b is not None:
                b.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, tuple(b.shape))))


def _compare_state(tm, layer, tol, skip=()):
    sd = _numpy_sd(tm)
    mine = layer.state_dict()
    assert list(mine) == list(sd)
    for k, v in sd.items():
        if k in skip:
            continue
        if k == "num_batches_tracked":
            assert mine[k] == v and mine[k].dtype == v.dtype and mine[k].shape == v.shape
        else:
            assert_close(mine[k], v, tol, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(_pairs(np.float32)))
def test_training_steps_match_torch(name, dtype):
    make_t, make_b, shape = _pairs(dtype)[name]
    tol = TOL[dtype]
    tm = make_t()
    _randomize_torch(tm, name)
    layer = make_b()
    assert layer.load_state_dict(_numpy_sd(tm)) == L.IncompatibleKeys([], [])
    # PyTorch's instance norm leaves num_batches_tracked at 0; bnc counts (documented)
    skip = ("num_batches_tracked",) if name.startswith("Instance") else ()
    rng = rng_for("steps", name)
    for step in range(3):
        x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        yt = tm(xt)
        yt.backward(torch.from_numpy(g))
        y = layer(x)
        dx = layer.backward(g)
        assert_close(y, yt.detach().numpy(), tol, f"step {step} y")
        assert_close(dx, xt.grad.numpy(), tol * 10, f"step {step} grad_input")
        for pname, p in tm.named_parameters():
            assert_close(getattr(layer, "grad_" + pname), p.grad.numpy(), tol * 10,
                         f"step {step} grad_{pname}")
        _compare_state(tm, layer, tol, skip)
    if skip:
        assert layer.num_batches_tracked == 3
    # eval
    tm.eval()
    layer.eval()
    x = (rng.standard_normal(shape)).astype(dtype)
    with torch.no_grad():
        y_t = tm(torch.from_numpy(x)).numpy()
    assert_close(layer(x), y_t, tol, "eval y")
    # bnc's state dict into a fresh torch module
    fresh = make_t().eval()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    with torch.no_grad():
        assert_close(layer(x), fresh(torch.from_numpy(x)).numpy(), tol, "round trip")


def test_torch_tensors_load_directly():
    tm = torch.nn.BatchNorm2d(3)
    _randomize_torch(tm, "direct")
    layer = L.BatchNorm(3)
    layer.load_state_dict(tm.state_dict())  # CPU tensors: np.asarray converts them
    assert_close(layer.running_var, tm.running_var.numpy(), 0)


def test_frozen_matches_torch_eval_training():
    """freeze() in training = a torch BatchNorm in eval mode whose affine
    parameters are trained: constant statistics in the backward."""
    tm = torch.nn.BatchNorm2d(4)
    _randomize_torch(tm, "frozen")
    tm.eval()
    layer = L.BatchNorm(4)
    layer.load_state_dict(_numpy_sd(tm))
    layer.freeze()
    rng = rng_for("frozen-steps")
    for _ in range(2):
        x = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
        g = rng.standard_normal(x.shape).astype(np.float32)
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        yt = tm(xt)
        yt.backward(torch.from_numpy(g))
        assert_close(layer(x), yt.detach().numpy(), 2e-5)
        assert_close(layer.backward(g), xt.grad.numpy(), 2e-5)
        assert_close(layer.grad_weight, tm.weight.grad.numpy(), 2e-5)
        assert_close(layer.grad_bias, tm.bias.grad.numpy(), 2e-5)
    _compare_state(tm, layer, 0)


def test_channels_last_batchnorm_matches_torch():
    tm = torch.nn.BatchNorm2d(3)
    layer = L.BatchNorm(3, channel_axis=-1)
    rng = rng_for("cl")
    for _ in range(2):
        x = rng.standard_normal((4, 5, 6, 3)).astype(np.float32)
        yt = tm(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        assert_close(layer(x), yt.detach().numpy(), 2e-5)
    _compare_state(tm, layer, 1e-6)
