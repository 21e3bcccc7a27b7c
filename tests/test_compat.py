"""bnc.compat: PyTorch's functional signatures (checked against torch 2.13's
with inspect.signature, results against torch) and the ONNX operators (every
BatchNormalization, InstanceNormalization, LayerNormalization,
GroupNormalization and RMSNormalization case of shared/conformance/onnx)."""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

import bnc
import bnc.reference
from bnc.compat import onnx as conx
from bnc.compat import torch as ctorch

TORCH_FUNCS = ["batch_norm", "instance_norm", "layer_norm", "group_norm", "rms_norm"]


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


# ------------------------------------------------------------------ torch ---

@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    torch.set_num_threads(1)
    return torch


@pytest.mark.parametrize("name", TORCH_FUNCS)
def test_torch_signature(torch, name):
    """Same parameter names, order, kinds and defaults as torch.nn.functional."""
    theirs = getattr(torch.nn.functional, name)
    assert _params(getattr(ctorch, name)) == _params(theirs)


def test_torch_covers_all():
    assert sorted(ctorch.__all__) == sorted(TORCH_FUNCS)


def _data(dtype, shape=(4, 6, 5, 3), seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    C = shape[1]
    vecs = [rng.standard_normal(C).astype(dtype) for _ in range(2)]
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    return x, vecs[0], vecs[1], rm, rv


def _t(torch, a):
    return None if a is None else torch.from_numpy(np.array(a))


TOL = {np.float32: 2e-5, np.float64: 1e-12}


def _close(got, want, dtype):
    want = want.detach().numpy() if hasattr(want, "detach") else want
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("momentum", [0.1, 0.25])
def test_torch_batch_norm(torch, dtype, training, momentum):
    F = torch.nn.functional
    x, w, b, rm, rv = _data(dtype)
    trm, trv = _t(torch, rm), _t(torch, rv)
    # positional, exactly as a PyTorch call site
    want = F.batch_norm(_t(torch, x), trm, trv, _t(torch, w), _t(torch, b), training, momentum,
                        1e-3)
    got = ctorch.batch_norm(x, rm, rv, w, b, training, momentum, 1e-3)
    _close(got, want, dtype)
    _close(rm, trm, dtype)
    _close(rv, trv, dtype)
    # keywords and defaults
    want = F.batch_norm(_t(torch, x), None, None, training=True)
    _close(ctorch.batch_norm(x, None, None, training=True), want, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_torch_instance_norm(torch, dtype, use_input_stats):
    F = torch.nn.functional
    x, w, b, rm, rv = _data(dtype)
    trm, trv = _t(torch, rm), _t(torch, rv)
    want = F.instance_norm(_t(torch, x), trm, trv, _t(torch, w), _t(torch, b),
                           use_input_stats, 0.3, 1e-4)
    got = ctorch.instance_norm(x, rm, rv, w, b, use_input_stats, 0.3, 1e-4)
    _close(got, want, dtype)
    _close(rm, trm, dtype)
    _close(rv, trv, dtype)
    _close(ctorch.instance_norm(x), F.instance_norm(_t(torch, x)), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("normalized_shape", [3, (3,), [5, 3], (6, 5, 3), (4, 6, 5, 3)])
def test_torch_layer_and_rms_norm(torch, dtype, normalized_shape):
    F = torch.nn.functional
    x = _data(dtype)[0]
    # an int is accepted as nn.LayerNorm does (F.layer_norm wants a sequence)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    rng = np.random.default_rng(1)
    w, b = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    want = F.layer_norm(_t(torch, x), shape, _t(torch, w), _t(torch, b), 1e-3)
    _close(ctorch.layer_norm(x, normalized_shape, w, b, 1e-3), want, dtype)
    _close(ctorch.layer_norm(x, normalized_shape), F.layer_norm(_t(torch, x), shape), dtype)
    want = F.rms_norm(_t(torch, x), shape, _t(torch, w), 1e-3)
    _close(ctorch.rms_norm(x, normalized_shape, w, 1e-3), want, dtype)
    _close(ctorch.rms_norm(x, normalized_shape, w),  # eps=None: machine epsilon
           F.rms_norm(_t(torch, x), shape, _t(torch, w)), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_groups", [1, 2, 3, 6])
def test_torch_group_norm(torch, dtype, num_groups):
    F = torch.nn.functional
    x, w, b = _data(dtype)[:3]
    want = F.group_norm(_t(torch, x), num_groups, _t(torch, w), _t(torch, b), 1e-3)
    _close(ctorch.group_norm(x, num_groups, w, b, 1e-3), want, dtype)
    _close(ctorch.group_norm(x, num_groups), F.group_norm(_t(torch, x), num_groups), dtype)


@pytest.mark.parametrize("fn", [ctorch.layer_norm, ctorch.rms_norm])
@pytest.mark.parametrize("normalized_shape", [4, (5, 4), (), (1, 2, 3, 4, 5, 3)])
def test_torch_normalized_shape_errors(fn, normalized_shape):
    x = np.ones((2, 3, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"normalized_shape: expected input with shape "
                                         r"\[\*, .*\], but got input of size \[2, 3, 5, 3\]"):
        fn(x, normalized_shape)


# ------------------------------------------------------------------- ONNX ---

ONNX_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "onnx"
INDEX = ONNX_DIR / "index.json"
ENTRIES = json.loads(INDEX.read_text()) if INDEX.is_file() else []
CASES = [e for e in ENTRIES if e["op_type"] in conx.OPS]


def test_onnx_cases_found():
    if not INDEX.is_file():
        pytest.skip(f"ONNX conformance data not found at {ONNX_DIR}")
    counts = {op: sum(e["op_type"] == op for e in CASES) for op in conx.OPS}
    assert counts["BatchNormalization"] >= 9
    assert counts["InstanceNormalization"] >= 3
    assert counts["LayerNormalization"] >= 40
    assert counts["GroupNormalization"] >= 5
    assert counts["RMSNormalization"] >= 30
    assert any(e["opset"] == 18 for e in CASES if e["op_type"] == "GroupNormalization")
    # every normalization op left out is one bnc has no kernel for
    assert {e["op_type"] for e in ENTRIES} - set(conx.OPS) <= {
        "LpNormalization", "LRN", "MeanVarianceNormalization"}


@pytest.mark.parametrize("entry", CASES, ids=[e["case"] for e in CASES])
def test_onnx_case(entry):
    """run_node with the case's effective attributes gives every expected
    output (dtype, shape, values); the inputs are left unchanged."""
    data = np.load(ONNX_DIR / entry["file"])
    meta = json.loads(str(data["meta"]))
    attrs = json.loads(str(data["attributes_effective"]))
    inputs = [data[f"input_{i}"] for i in range(len(meta["input_names"]))]
    want = [data[f"output_{i}"] for i in range(len(meta["output_names"]))]
    copies = [a.copy() for a in inputs]
    got = conx.run_node(entry["op_type"], inputs, attrs)
    assert len(got) >= len(want)
    for name, g, w in zip(meta["output_names"], got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=name)
    for a, c in zip(inputs, copies):
        assert np.array_equal(a, c)


def test_onnx_signatures():
    P, K = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    E = inspect.Parameter.empty
    assert _params(conx.batch_normalization) == [
        ("X", P, E), ("scale", P, E), ("B", P, E), ("input_mean", P, E), ("input_var", P, E),
        ("epsilon", K, 1e-5), ("momentum", K, 0.9), ("training_mode", K, 0)]
    assert _params(conx.instance_normalization) == [
        ("input", P, E), ("scale", P, E), ("B", P, E), ("epsilon", K, 1e-5)]
    assert _params(conx.layer_normalization) == [
        ("X", P, E), ("Scale", P, E), ("B", P, None), ("axis", K, -1), ("epsilon", K, 1e-5),
        ("stash_type", K, 1)]
    assert _params(conx.group_normalization) == [
        ("X", P, E), ("scale", P, E), ("bias", P, E), ("epsilon", K, 1e-5),
        ("num_groups", K, E), ("stash_type", K, 1)]
    assert _params(conx.rms_normalization) == [
        ("X", P, E), ("scale", P, E), ("axis", K, -1), ("epsilon", K, 1e-5),
        ("stash_type", K, 1)]


def _np_batch_norm(x, scale, b, mean, var, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * scale.reshape(
        shape) + b.reshape(shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_onnx_batch_normalization_training(dtype):
    """The ONNX training formula, in float64 NumPy: momentum weighs the old
    value, the running variance takes the biased batch variance."""
    x, w, b, rm, rv = _data(dtype, (5, 3, 4))
    copies = [a.copy() for a in (x, w, b, rm, rv)]
    y, new_rm, new_rv = conx.batch_normalization(x, w, b, rm, rv, epsilon=1e-3, momentum=0.8,
                                                 training_mode=1)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 2)), x64.var(axis=(0, 2))
    tol = TOL[dtype]
    np.testing.assert_allclose(y, _np_batch_norm(x64, w, b, mean, var, 1e-3), rtol=tol,
                               atol=tol)
    np.testing.assert_allclose(new_rm, 0.8 * rm + 0.2 * mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(new_rv, 0.8 * rv + 0.2 * var, rtol=tol, atol=tol)
    assert new_rm.dtype == new_rv.dtype == dtype
    for a, c in zip((x, w, b, rm, rv), copies):
        assert np.array_equal(a, c)
    y0 = conx.batch_normalization(x, w, b, rm, rv)  # training_mode=0: Y only
    np.testing.assert_allclose(y0, _np_batch_norm(x64, w, b, rm, rv, 1e-5), rtol=tol, atol=tol)


def test_onnx_group_normalization_scale_per_group_or_channel():
    x, _, _, _, _ = _data(np.float64, (2, 6, 3, 3))
    sg, bg = np.array([1.5, -2.0, 0.5]), np.array([0.1, 0.2, -0.3])
    per_group = conx.group_normalization(x, sg, bg, num_groups=3)
    per_channel = conx.group_normalization(x, np.repeat(sg, 2), np.repeat(bg, 2), num_groups=3)
    assert np.array_equal(per_group, per_channel)
    np.testing.assert_allclose(per_group, bnc.reference.group_norm(
        x, 3, np.repeat(sg, 2), np.repeat(bg, 2)), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"scale must have shape \(6,\) \(per channel, opset "
                                         r"21\) or \(3,\) \(per group, opset 18\), got \(2,\)"):
        conx.group_normalization(x, np.ones(2), np.ones(6), num_groups=3)
    with pytest.raises(ValueError, match="num_groups must divide the 6 channels, got 4"):
        conx.group_normalization(x, np.ones(6), np.ones(6), num_groups=4)


@pytest.mark.parametrize("stash_type, dtype", [(1, np.float32), (11, np.float64),
                                               (10, np.float16)])
def test_onnx_layer_normalization_stash_type(stash_type, dtype):
    x = _data(np.float64, (3, 4, 5))[0]
    y, mean, invstd = conx.layer_normalization(x, np.ones(5), axis=-1, stash_type=stash_type)
    assert y.dtype == np.float64 and mean.dtype == invstd.dtype == dtype
    assert mean.shape == invstd.shape == (3, 4, 1)
    np.testing.assert_allclose(mean, x.mean(axis=-1, keepdims=True).astype(dtype))
    with pytest.raises(ValueError, match="stash_type must be one of"):
        conx.layer_normalization(x, np.ones(5), stash_type=16)


def test_onnx_broadcast_scale_and_axis_errors():
    x = _data(np.float32, (2, 3, 4))[0]
    y = conx.rms_normalization(x, np.float32(2.0), axis=1)  # a scalar broadcasts
    np.testing.assert_allclose(y, 2 * bnc.rms_norm(x, axis=1, eps=1e-5), rtol=1e-6)
    with pytest.raises(ValueError, match=r"scale must broadcast to the normalized shape "
                                         r"\(3, 4\), got shape \(2,\)"):
        conx.rms_normalization(x, np.ones(2, np.float32), axis=1)
    with pytest.raises(ValueError, match=r"axis must be in \[-3, 2\] for a 3-D X, got 3"):
        conx.layer_normalization(x, np.ones(4, np.float32), axis=3)


def test_onnx_run_node_legacy_and_unknown():
    x, w, b, rm, rv = _data(np.float32, (2, 3, 4))
    (y,) = conx.run_node("BatchNormalization", [x, w, b, rm, rv],
                         {"is_test": 1, "spatial": 1, "epsilon": 1e-3, "momentum": 0.9})
    np.testing.assert_allclose(y, conx.batch_normalization(x, w, b, rm, rv, epsilon=1e-3))
    with pytest.raises(NotImplementedError, match="spatial=0"):
        conx.run_node("BatchNormalization", [x, w, b, rm, rv], {"spatial": 0})
    with pytest.raises(NotImplementedError, match="no 'LRN'"):
        conx.run_node("LRN", [x], {"size": 3})
