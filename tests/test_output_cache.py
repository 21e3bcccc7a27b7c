"""bnc's cache of large outputs' memory (bnc/_outcache.h, set_output_cache):
outputs of at least the cache's minimum size reuse the memory of freed ones,
and are ordinary arrays in every other respect."""
import pickle
import threading

import numpy as np
import pytest

import bnc
from bnc import _core
from bnc import reference as ref

MIB = 1 << 20


@pytest.fixture
def small_cache():
    """Outputs of 1 MiB and more go through the cache (instead of 32 MiB),
    which starts empty with the default limit; both restored after."""
    old_limit = bnc.set_output_cache(0)
    _, old_min = _core._output_cache_state(MIB)
    bnc.set_output_cache(1 << 30)
    yield
    bnc.set_output_cache(0)
    _core._output_cache_state(old_min)
    bnc.set_output_cache(old_limit)


def held():
    return _core._output_cache_state()[0]


def _case(shape=(4, 8, 128, 64), dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    C = shape[1]
    w = rng.normal(1, 0.3, C).astype(np.float32)
    b = rng.normal(0, 0.3, C).astype(np.float32)
    rm = rng.normal(0, 0.3, C).astype(np.float32)
    rv = rng.uniform(0.5, 2, C).astype(np.float32)
    return x, w, b, rm, rv


def test_a_freed_output_is_reused_and_overwritten(small_cache):
    x, w, b, rm, rv = _case()
    want = bnc.batch_norm(x, w, b, rm, rv, out=np.empty_like(x))
    y = bnc.batch_norm(x, w, b, rm, rv)
    assert y.flags.owndata and y.flags.writeable and y.flags.c_contiguous
    addr = y.ctypes.data
    y[...] = np.nan             # stale values the next output must overwrite
    del y
    assert held() >= x.nbytes
    y2 = bnc.batch_norm(x, w, b, rm, rv)
    assert y2.ctypes.data == addr
    assert held() == 0
    assert np.array_equal(y2, want)
    np.testing.assert_allclose(y2, ref.batch_norm(x, w, b, rm, rv), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call", ["train", "backward", "group", "layer", "layer_backward"])
def test_every_large_output_path_goes_through_the_cache(small_cache, call):
    x, w, b, _, _ = _case()
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(x.dtype)
    _, saved = bnc.batch_norm_forward(x, w, b)
    _, lsaved = bnc.layer_norm_forward(x)
    calls = {
        "train": lambda: bnc.batch_norm_forward(x, w, b)[0],
        "backward": lambda: bnc.batch_norm_backward(dy, x, w, saved)[0],
        "group": lambda: bnc.group_norm(x, 4, w, b),
        "layer": lambda: bnc.layer_norm(x),
        "layer_backward": lambda: bnc.layer_norm_backward(dy, x, None, lsaved)[0],
    }
    first = calls[call]()
    want = first.copy()
    del first
    assert held() >= x.nbytes
    again = calls[call]()
    assert held() == 0          # the kept block became this output
    assert np.array_equal(again, want)


def test_virtual_batch_layer_outputs_go_through_the_cache(small_cache):
    """bnc.layers.BatchNorm with virtual batches writes each slice's kernel
    output into one array of x's size, forward and backward: both come from
    the cache."""
    x, _, _, _, _ = _case()
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(x.dtype)
    layer = bnc.layers.BatchNorm(x.shape[1], virtual_batch_size=2)
    y = layer.forward(x)
    dx = layer.backward(dy)
    want_y, want_dx = y.copy(), dx.copy()
    del y, dx
    assert held() >= 2 * x.nbytes
    y = layer.forward(x)
    dx = layer.backward(dy)
    assert held() == 0          # each took a kept block
    assert np.array_equal(y, want_y) and np.array_equal(dx, want_dx)


def test_small_outputs_and_views(small_cache):
    x, w, b, rm, rv = _case((2, 8, 16, 16))      # 16 KiB: under the minimum
    y = bnc.batch_norm(x, w, b, rm, rv)
    del y
    assert held() == 0
    x, w, b, rm, rv = _case()
    y = bnc.batch_norm(x, w, b, rm, rv)
    v = y[:, ::2]
    want = v.copy()
    del y
    assert held() == 0          # the view keeps the memory alive
    assert np.array_equal(v, want)
    del v
    assert held() >= x.nbytes


def test_resize_and_pickle_keep_the_values(small_cache):
    x, w, b, rm, rv = _case()
    y = bnc.batch_norm(x, w, b, rm, rv)
    want = y.ravel().copy()
    y.resize((x.size * 3,), refcheck=False)     # realloc through the handler
    assert np.array_equal(y[:x.size], want)
    y.resize((x.size // 4,), refcheck=False)    # shrink
    assert np.array_equal(y, want[:x.size // 4])
    assert np.array_equal(pickle.loads(pickle.dumps(y)), y)
    del y


def test_the_limit_bounds_what_is_kept(small_cache):
    x, w, b, rm, rv = _case()
    bnc.set_output_cache(3 * x.nbytes // 2)
    ys = [bnc.batch_norm(x, w, b, rm, rv) for _ in range(3)]
    del ys
    assert held() == x.nbytes   # one block fits, the others were released
    assert bnc.set_output_cache(0) == 3 * x.nbytes // 2
    assert held() == 0
    y = bnc.batch_norm(x, w, b, rm, rv)             # limit 0: no cache at all
    del y
    assert held() == 0


def test_outputs_freed_after_the_cache_is_off(small_cache):
    x, w, b, rm, rv = _case()
    y = bnc.batch_norm(x, w, b, rm, rv)
    bnc.set_output_cache(0)
    del y                       # freed, not kept
    assert held() == 0


def test_threads_share_the_cache(small_cache):
    x, w, b, rm, rv = _case()
    want = bnc.batch_norm(x, w, b, rm, rv, out=np.empty_like(x))
    bad = []

    def work():
        for _ in range(20):
            y = bnc.batch_norm(x, w, b, rm, rv, n_threads=1)
            if not np.array_equal(y, want):
                bad.append(1)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad


def test_output_like(small_cache):
    x = np.asfortranarray(np.ones((512, 1024), np.float32))
    y = bnc.output_like(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.flags.f_contiguous
    with pytest.raises(TypeError, match="a must be a numpy.ndarray"):
        bnc.output_like([1.0, 2.0])


@pytest.mark.parametrize("bad,exc", [(1.5, TypeError), (True, TypeError), ("1", TypeError),
                                     (-1, ValueError), (1 << 64, ValueError)])
def test_set_output_cache_rejects(bad, exc):
    with pytest.raises(exc, match="max_bytes"):
        bnc.set_output_cache(bad)
