"""ONNX BatchNormalization and InstanceNormalization conformance cases
(shared/conformance/onnx).

Mapping (see shared/conformance/README.md): epsilon -> eps; ONNX momentum
weighs the old running value -> bnc's decay=; ONNX's running variance is the
biased one -> correction=0; training_mode=1 outputs (Y, running_mean,
running_var), all compared. InstanceNormalization (inputs x, scale, B):
epsilon -> eps, scale/B -> weight/bias, statistics per (n, c) as
bnc.instance_norm with use_input_stats=True. Expected values are float32.
"""

import json
from pathlib import Path

import numpy as np
import pytest

import bnc

ONNX_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "onnx"
INDEX = ONNX_DIR / "index.json"

if not INDEX.is_file():
    pytest.skip(f"ONNX conformance data not found at {ONNX_DIR} (expected the shared/ "
                "directory beside the repository)", allow_module_level=True)

CASES = [e for e in json.loads(INDEX.read_text()) if e["op_type"] == "BatchNormalization"]
RTOL = ATOL = 1e-5


def test_cases_found():
    assert len(CASES) >= 4
    assert any(e["attributes_effective"].get("training_mode") == 1 for e in CASES)


def _load(entry):
    data = np.load(ONNX_DIR / entry["file"])
    attrs = json.loads(str(data["attributes_effective"]))
    meta = json.loads(str(data["meta"]))
    inputs = [data[f"input_{i}"] for i in range(len(meta["input_names"]))]
    outputs = [data[f"output_{i}"] for i in range(len(meta["output_names"]))]
    return attrs, meta, inputs, outputs


@pytest.mark.parametrize("entry", CASES, ids=[e["case"] for e in CASES])
def test_batchnorm_case(entry):
    attrs, meta, inputs, outputs = _load(entry)
    if attrs.get("spatial", 1) != 1:
        pytest.skip("spatial=0 (per-activation statistics) is not batch norm over channels")
    x, scale, bias, mean, var = inputs
    x_copy = x.copy()
    eps = float(attrs.get("epsilon", 1e-5))
    training = bool(attrs.get("training_mode", 0))
    if not training:
        params = [a.copy() for a in (scale, bias, mean, var)]
        y = bnc.batch_norm(x, scale, bias, mean, var, training=False, eps=eps)
        assert y.dtype == outputs[0].dtype
        np.testing.assert_allclose(y, outputs[0], rtol=RTOL, atol=ATOL, err_msg="Y")
        for a, c in zip((scale, bias, mean, var), params):
            assert np.array_equal(a, c)
    else:
        running_mean, running_var = mean.copy(), var.copy()
        decay = float(attrs.get("momentum", 0.9))
        y = bnc.batch_norm(x, scale, bias, running_mean, running_var, training=True,
                           decay=decay, correction=0, eps=eps)
        np.testing.assert_allclose(y, outputs[0], rtol=RTOL, atol=ATOL, err_msg="Y")
        assert len(outputs) == 3
        np.testing.assert_allclose(running_mean, outputs[1], rtol=RTOL, atol=ATOL,
                                   err_msg="running_mean")
        np.testing.assert_allclose(running_var, outputs[2], rtol=RTOL, atol=ATOL,
                                   err_msg="running_var")
    assert np.array_equal(x, x_copy)


@pytest.mark.parametrize("entry", [e for e in CASES if e["attributes_effective"].get(
    "training_mode") == 1], ids=lambda e: e["case"])
def test_batchnorm_case_channels_last(entry):
    """The same case with an NHWC copy of x and channel_axis=-1."""
    attrs, meta, inputs, outputs = _load(entry)
    x, scale, bias, mean, var = inputs
    x_nhwc = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    running_mean, running_var = mean.copy(), var.copy()
    y = bnc.batch_norm(x_nhwc, scale, bias, running_mean, running_var, training=True,
                       decay=float(attrs["momentum"]), correction=0,
                       eps=float(attrs["epsilon"]), channel_axis=-1)
    np.testing.assert_allclose(np.moveaxis(y, -1, 1), outputs[0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(running_mean, outputs[1], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(running_var, outputs[2], rtol=RTOL, atol=ATOL)


IN_CASES = [e for e in json.loads(INDEX.read_text()) if e["op_type"] == "InstanceNormalization"]


def test_instancenorm_cases_found():
    assert len(IN_CASES) >= 3


@pytest.mark.parametrize("entry", IN_CASES, ids=[e["case"] for e in IN_CASES])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_instancenorm_case(entry, layout):
    attrs, meta, inputs, outputs = _load(entry)
    x, scale, bias = inputs
    copies = [a.copy() for a in inputs]
    eps = float(attrs.get("epsilon", 1e-5))
    want = outputs[0]
    if layout == "nchw":
        y = bnc.instance_norm(x, scale, bias, eps=eps)
    else:  # the same case on a channels-last copy of x
        y = np.moveaxis(bnc.instance_norm(np.ascontiguousarray(np.moveaxis(x, 1, -1)), scale,
                                          bias, eps=eps, channel_axis=-1), -1, 1)
    assert y.dtype == want.dtype and y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL, err_msg="y")
    for a, c in zip(inputs, copies):
        assert np.array_equal(a, c)
