"""bnc.layers never writes half a state (docs/reliability.md, layer part).

Every call that writes layer state (forward, backward, load_state_dict,
recompute_running_stats) is made to fail in every way this file knows - bad
input, broken layer attributes, and KeyboardInterrupt raised inside each
functional call the layer makes - and every array, counter, gradient, flag
and the forward cache must be what it was. After the failures a layer keeps
working and agrees with a twin that never saw them.
"""
import copy
import os
import signal

import numpy as np
import pytest

from bnc import layers as L
from conftest import bit_equal
from layer_helpers import assert_same_state, make_layers, snapshot

NAMES = list(make_layers())
FUNCTIONAL = [n for n in dir(L) if n.endswith(("_forward", "_backward", "_stats"))
              and callable(getattr(L, n))]


def _count_clean_failures(layer, call, cases, what):
    """call(case) for each case; every TypeError/ValueError must leave the layer
    as it was. Returns how many raised."""
    raised = 0
    for name, case in cases.items():
        snap = snapshot(layer)
        try:
            call(case)
        except (TypeError, ValueError):
            raised += 1
            assert_same_state(layer, snap, f"{what}({name})")
    return raised


def _bad_inputs(x):
    one = (slice(0, 1), slice(None)) + (slice(0, 1),) * (x.ndim - 2)
    wrong = np.float32 if x.dtype == np.float64 else np.float64
    return {
        "int": x.astype(np.int32), "complex": x.astype(np.complex64),
        "other float": x.astype(wrong), "1-d": x.ravel(), "0-d": x.ravel()[0],
        "fewer channels": x[:, :-1], "shorter rows": x[..., :-1], "string": "abc",
        "None": None, "object": object(), "one value": x[one],
    }


@pytest.mark.parametrize("mode", ["train", "eval", "frozen"])
@pytest.mark.parametrize("name", NAMES)
def test_failed_forward_writes_nothing(name, mode):
    layer, x = make_layers()[name]
    if mode == "eval":
        layer.eval()
    if mode == "frozen":
        layer.freeze()
    assert _count_clean_failures(layer, layer, _bad_inputs(x), f"{name} forward") >= 8


@pytest.mark.parametrize("name", NAMES)
def test_broken_attributes_write_nothing(name):
    """The functional calls validate the layer's own arrays and settings before
    writing: a training forward with a read-only running array, a bad momentum
    or bad renorm limits raises with everything unchanged."""
    layer, x = make_layers()[name]
    breakages = []
    if getattr(layer, "running_mean", None) is not None:
        breakages += [("running_var", "readonly"), ("num_batches_tracked", "readonly"),
                      ("momentum", 1.5), ("momentum", "x")]
    if hasattr(layer, "rmax"):
        breakages += [("rmax", 0.5), ("dmax", -1.0)]
    if getattr(layer, "weight", None) is not None:
        breakages += [("weight", np.ones(99, np.float32))]
    for attr, value in breakages:
        t = copy.deepcopy(layer)
        if isinstance(value, str) and value == "readonly":
            getattr(t, attr).flags.writeable = False
        else:
            setattr(t, attr, value)
        snap = snapshot(t)
        with pytest.raises((TypeError, ValueError)):
            t(x)
        assert_same_state(t, snap, f"{name} with broken {attr}")


@pytest.mark.parametrize("name", NAMES)
def test_failed_backward_writes_nothing(name):
    layer, x = make_layers()[name]
    snap = snapshot(layer)
    with pytest.raises(RuntimeError):  # the helper already ran forward + backward
        layer.backward(np.ones_like(x))
    assert_same_state(layer, snap, "backward without forward")
    layer(x)
    assert _count_clean_failures(layer, layer.backward, _bad_inputs(x),
                                 f"{name} backward") >= 8
    layer.backward(np.ones_like(x))  # the cache survived the failures


def _bad_state_dicts(layer):
    """Each: every value valid and different from the layer's except the last one."""
    good = {k: (v + 1 if k != "num_batches_tracked" else v + 5)
            for k, v in layer.state_dict().items()}
    last = list(good)[-1]
    cases = {}
    for what, value in [("shape", np.zeros(99)), ("complex", np.zeros(1, complex)),
                        ("string", "abc"), ("object", object()), ("nested", [[1], [2, 3]]),
                        ("float count", np.array(1.5)), ("negative", np.array(-1))]:
        d = dict(good)
        d[last] = value
        cases[what] = d
    d = dict(good)
    d["unexpected"] = np.zeros(3)
    cases["unexpected"] = d
    d = dict(good)
    del d[list(good)[0]]
    cases["missing"] = d
    cases["not a mapping"] = list(good.items())
    return cases


@pytest.mark.parametrize("name", NAMES)
def test_failed_load_state_dict_writes_nothing(name):
    layer, x = make_layers()[name]
    layer(x)
    assert _count_clean_failures(layer, layer.load_state_dict, _bad_state_dicts(layer),
                                 f"{name} load_state_dict") >= 7


@pytest.mark.parametrize("name", [n for n in NAMES
                                  if n.startswith(("Batch", "Instance"))])
def test_failed_recompute_writes_nothing(name):
    layer, x = make_layers()[name]

    def interrupted():
        yield x
        raise KeyboardInterrupt

    for what, batches in [("bad last batch", [x, x.astype(np.int32)]),
                          ("wrong channels", [x, x[:, :-1]]), ("empty", []),
                          ("interrupted", interrupted())]:
        snap = snapshot(layer)
        with pytest.raises((TypeError, ValueError, KeyboardInterrupt)):
            layer.recompute_running_stats(batches)
        assert_same_state(layer, snap, f"{name} recompute({what})")


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("name", NAMES)
def test_keyboard_interrupt_inside_any_functional_call(name, monkeypatch):
    """Each functional call the layer makes raises KeyboardInterrupt in turn,
    in a training or eval forward and in a backward: nothing changes, and
    afterwards the layer agrees bit for bit with a twin that never saw the
    interrupted call."""
    base, x = make_layers()[name]
    g = np.full_like(x, 0.5)
    interrupted = 0
    for fname in FUNCTIONAL:
        for mode in ("train", "eval"):
            for step in ("forward", "backward"):
                layer, twin = copy.deepcopy(base), copy.deepcopy(base)
                for t in (layer, twin):
                    getattr(t, mode)()
                    if step == "backward":
                        t(x)
                snap = snapshot(layer)
                with monkeypatch.context() as m:
                    m.setattr(L, fname, _interrupt)
                    try:
                        layer(x) if step == "forward" else layer.backward(g)
                        continue  # this call does not use fname
                    except KeyboardInterrupt:
                        interrupted += 1
                assert_same_state(layer, snap, f"{name}: {fname} interrupted in {step}")
                for t in (layer, twin):
                    t.train()
                y = layer(x)
                assert bit_equal(y, twin(x))
                assert bit_equal(layer.backward(g), twin.backward(g))
                for k, v in twin.state_dict().items():
                    assert bit_equal(layer.state_dict()[k], v), k
                assert bit_equal(layer.grad_weight, twin.grad_weight)
    assert interrupted >= 4


def test_interrupt_between_calls_leaves_a_usable_layer():
    layer, x = make_layers()["BatchNorm"]
    twin = copy.deepcopy(layer)
    try:
        layer(x)
        raise KeyboardInterrupt  # the user's code stops between forward and backward
    except KeyboardInterrupt:
        pass
    twin(x)
    assert bit_equal(layer.running_var, twin.running_var)
    assert bit_equal(layer.backward(x), twin.backward(x))


def test_interrupt_after_the_running_update_is_a_whole_step(monkeypatch):
    """A KeyboardInterrupt right after the running statistics were written (the
    forward's last write but the cache) leaves mean, var and count of one
    complete step, and the previous cache."""
    layer, x = make_layers()["BatchNorm"]
    twin = copy.deepcopy(layer)
    twin(x)
    real = L.update_running_stats

    def then_interrupt(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(L, "update_running_stats", then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        layer(x)
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        assert bit_equal(getattr(layer, k), getattr(twin, k)), k
    assert layer._cache is None


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix",
                    reason="needs POSIX signals")
def test_ctrl_c_during_load_is_held_until_the_state_is_whole(monkeypatch):
    """A real SIGINT arriving while load_state_dict writes its arrays is held
    back: the KeyboardInterrupt comes after every array was written."""
    layer, _ = make_layers()["BatchNorm"]
    sd = {k: v + 1 for k, v in layer.state_dict().items()}
    real = np.copyto
    sent = []

    def copyto(dst, src, **kw):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        real(dst, src, **kw)

    monkeypatch.setattr(np, "copyto", copyto)
    with pytest.raises(KeyboardInterrupt):
        layer.load_state_dict(sd)
    monkeypatch.undo()
    assert sent
    for k, v in sd.items():
        assert np.array_equal(getattr(layer, k), v), k
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
