"""Helpers shared by the bnc.layers test modules."""
import numpy as np

from bnc import layers as L

STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked",
         "grad_weight", "grad_bias")


def make_layers(C=6, dtype=np.float32):
    """name -> (a trained-looking layer, an input it takes); every class, with
    running statistics where it can have them."""
    rng = np.random.default_rng(11)
    xdt = np.float64 if dtype == np.float64 else np.float32
    x4 = rng.standard_normal((5, C, 4, 3)).astype(xdt) * 2 + 1
    x3 = rng.standard_normal((4, C, 7)).astype(xdt)
    made = {
        "BatchNorm": (L.BatchNorm(C, dtype=dtype), x4),
        "BatchNorm-ghost": (L.BatchNorm(C, virtual_batch_size=2, dtype=dtype), x4),
        "BatchNorm-cumulative": (L.BatchNorm(C, momentum=None, dtype=dtype), x3),
        "BatchRenorm": (L.BatchRenorm(C, rmax=1.5, dmax=0.5, dtype=dtype), x4),
        "InstanceNorm": (L.InstanceNorm(C, affine=True, track_running_stats=True,
                                        dtype=dtype), x4),
        "GroupNorm": (L.GroupNorm(3, C, dtype=dtype), x4),
        "LayerNorm": (L.LayerNorm((4, 3), dtype=dtype), x4),
        "RMSNorm": (L.RMSNorm(7, dtype=dtype), x3),
    }
    for layer, x in made.values():
        for name in ("weight", "bias", "running_mean"):
            a = getattr(layer, name, None)
            if a is not None:
                a[...] = rng.uniform(-1, 1, a.shape)
        if getattr(layer, "running_var", None) is not None:
            layer.running_var[...] = rng.uniform(0.5, 2, layer.running_var.shape)
            layer.num_batches_tracked[...] = 3
        layer(x)
        layer.backward(rng.standard_normal(x.shape).astype(x.dtype))
    return made


def snapshot(layer):
    """Copies of every array of the layer, the mode flags and the cache's identity."""
    snap = {n: None if getattr(layer, n, None) is None else np.array(getattr(layer, n))
            for n in STATE}
    snap["ids"] = {n: id(getattr(layer, n, None)) for n in STATE[:5]}
    snap["flags"] = (layer.training, layer.frozen)
    snap["cache"] = layer._cache
    return snap


def assert_same_state(layer, snap, what=""):
    now = snapshot(layer)
    for n in STATE:
        a, b = now[n], snap[n]
        assert (a is None) == (b is None), f"{what}: {n} appeared or vanished"
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {n} changed type"
            assert a.tobytes() == b.tobytes(), f"{what}: {n} was written"
    assert now["ids"] == snap["ids"], f"{what}: an array was replaced"
    assert now["flags"] == snap["flags"], f"{what}: mode changed"
    assert now["cache"] is snap["cache"], f"{what}: the forward cache changed"
