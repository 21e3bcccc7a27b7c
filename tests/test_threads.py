"""Threads: results bit-identical for any thread count and under concurrent
calls from Python threads; the thread-count API; OpenMP/threadpoolctl."""

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import bnc
from conftest import bit_equal, make_params, make_x, norm_axis, rng_for

# Few channels (C=1, 3) and many (C=64); NCHW, NHWC and 2-D; sizes above any
# reasonable serial threshold, plus odd sizes.
TSHAPES = [
    ((4, 1, 128, 128), 1),
    ((8, 3, 64, 64), 1),
    ((8, 64, 16, 16), 1),
    ((7, 3, 71, 73), 1),
    ((8, 64, 64, 3), -1),
    ((8, 16, 16, 64), -1),
    ((65536, 1), 1),
    ((32768, 3), 1),
    ((2048, 64), 1),
    ((16411, 3), -1),
]
TSHAPE_IDS = ["nchw-c1", "nchw-c3", "nchw-c64", "nchw-odd", "nhwc-c3", "nhwc-c64",
              "2d-c1", "2d-c3", "2d-c64", "2d-odd"]
THREADS = [1, 2, 3, 4]


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count()


def _inputs(shape, channel_axis, dtype):
    rng = rng_for("threads", shape, np.dtype(dtype).name)
    x = make_x(shape, dtype, rng, loc=3.0, scale=2.0)
    g = make_x(shape, dtype, rng)
    C = shape[norm_axis(channel_axis, len(shape))]
    return x, g, make_params(C, dtype, rng)


def _all_ops(x, g, params, channel_axis, **kw):
    """Every kernel once; returns a flat list of result arrays."""
    w, b, rm, rv = params
    rm, rv = rm.copy(), rv.copy()
    res = []
    y = bnc.batch_norm(x, w, b, rm, rv, training=True, channel_axis=channel_axis, **kw)
    res += [y, rm, rv]
    res.append(bnc.batch_norm(x, w, b, rm, rv, channel_axis=channel_axis, **kw))
    mean, var, count = bnc.batch_norm_stats(x, channel_axis=channel_axis, **kw)
    res += [mean, var, np.asarray(count)]
    for frozen in (False, True):
        m, v = (rm, rv) if frozen else (None, None)
        y, saved = bnc.batch_norm_forward(x, w, b, mean=m, var=v, channel_axis=channel_axis,
                                          **kw)
        res += [y, *saved]
        res += list(bnc.batch_norm_backward(g, x, w, saved, channel_axis=channel_axis,
                                            use_batch_stats=not frozen, **kw))
    return res


def _assert_all_bit_equal(a, b, what):
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert bit_equal(u, v), f"{what}: result #{i} differs"


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("shape,channel_axis", TSHAPES, ids=TSHAPE_IDS)
def test_bit_identical_for_any_thread_count(shape, channel_axis, dtype):
    x, g, params = _inputs(shape, channel_axis, dtype)
    serial = _all_ops(x, g, params, channel_axis, n_threads=1)
    for n in THREADS[1:] + [-1]:
        _assert_all_bit_equal(_all_ops(x, g, params, channel_axis, n_threads=n), serial,
                              f"n_threads={n}")


@pytest.mark.parametrize("shape,channel_axis", [TSHAPES[1], TSHAPES[4], TSHAPES[7]],
                         ids=["nchw", "nhwc", "2d"])
def test_global_thread_count_same_bits(shape, channel_axis, restore_threads):
    x, g, params = _inputs(shape, channel_axis, np.float32)
    serial = _all_ops(x, g, params, channel_axis, n_threads=1)
    for n in THREADS:
        with bnc.num_threads(n):
            _assert_all_bit_equal(_all_ops(x, g, params, channel_axis), serial,
                                  f"set_num_threads({n})")


def test_negative_n_threads_counts_back(restore_threads):
    x, g, params = _inputs((8, 3, 64, 64), 1, np.float32)
    serial = _all_ops(x, g, params, 1, n_threads=1)
    for n in (-1, -2):
        _assert_all_bit_equal(_all_ops(x, g, params, 1, n_threads=n), serial, f"n_threads={n}")
    # -1 means every usable core, -2 all but one
    bnc.set_num_threads(-1)
    assert bnc.get_num_threads() == _cores()
    if _cores() > 1:
        bnc.set_num_threads(-2)
        assert bnc.get_num_threads() == _cores() - 1


def _family_ops(x, g, **kw):
    """Layer, RMS and group norm and batch renorm once each (channels first)."""
    C = x.shape[1]
    w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    y, s = bnc.layer_norm_forward(x, axis=1, **kw)
    res = [y, *s, *bnc.layer_norm_backward(g, x, None, s, axis=1, **kw)]
    y, s = bnc.rms_norm_forward(x, axis=2, **kw)
    res += [y, *s, *bnc.rms_norm_backward(g, x, None, s, axis=2, **kw)]
    y, s = bnc.group_norm_forward(x, 4, w, b, **kw)
    res += [y, *s, *bnc.group_norm_backward(g, x, 4, w, s, **kw)]
    y, s = bnc.batch_renorm_forward(x, w, b, np.zeros(C, np.float32), np.ones(C, np.float32),
                                    rmax=2.0, dmax=1.0, **kw)
    res += [y, *s, *bnc.batch_renorm_backward(g, x, w, s, **kw)]
    return res


def test_huge_thread_counts_are_capped():
    """n_threads far above the cores runs at most BNC_MAX_TEAM threads (a team
    of 100000 made libgomp crash), with the same bits; above INT_MAX it is a
    ValueError naming the argument."""
    x, g, params = _inputs((16, 64, 8, 8), 1, np.float32)
    serial = _all_ops(x, g, params, 1, n_threads=1) + _family_ops(x, g, n_threads=1)
    for n in (257, 100_000, 2**31 - 1):
        got = _all_ops(x, g, params, 1, n_threads=n) + _family_ops(x, g, n_threads=n)
        _assert_all_bit_equal(got, serial, f"n_threads={n}")
    for n in (2**31, 2**40):
        with pytest.raises(ValueError, match="n_threads must be at most"):
            bnc.batch_norm(x, training=True, n_threads=n)
        with pytest.raises(ValueError, match="n_threads must be at most"):
            bnc.layer_norm(x, n_threads=n)
        with pytest.raises(ValueError, match="n must be at most"):
            bnc.set_num_threads(n)


def test_concurrent_python_threads_match_serial():
    """8 Python threads calling bnc at once on different arrays: same bits as serial."""
    jobs = []
    for i in range(8):
        shape, ca = TSHAPES[i % len(TSHAPES)]
        dtype = (np.float32, np.float64)[i % 2]
        x, g, params = _inputs(shape, ca, dtype)
        jobs.append((x, g, params, ca))
    serial = [_all_ops(*job) for job in jobs]

    def run(i):
        results = []
        for _ in range(3):
            results.append(_all_ops(*jobs[i]))
            results.append(_all_ops(*jobs[i], n_threads=2))
        return results

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(run, range(8)))
    for i, results in enumerate(outcomes):
        for r in results:
            _assert_all_bit_equal(r, serial[i], f"job {i} in a thread")


def test_concurrent_calls_on_shared_input():
    """Threads reading the same x at once (each with its own running stats)."""
    x, g, params = _inputs((8, 64, 16, 16), 1, np.float32)
    expected = _all_ops(x, g, params, 1)
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: _all_ops(x, g, params, 1), range(16)))
    for r in outcomes:
        _assert_all_bit_equal(r, expected, "shared input")


# ---------------------------------------------------------------------------
# the thread-count API


def test_set_num_threads_returns_previous(restore_threads):
    before = bnc.get_num_threads()
    assert isinstance(before, int) and before >= 1
    assert bnc.set_num_threads(3) == before
    assert bnc.get_num_threads() == 3
    assert bnc.set_num_threads(1) == 3
    assert bnc.get_num_threads() == 1
    assert bnc.set_num_threads(before) == 1
    assert bnc.get_num_threads() == before


def test_num_threads_context_manager_restores(restore_threads):
    before = bnc.get_num_threads()
    with bnc.num_threads(2):
        assert bnc.get_num_threads() == 2
        with bnc.num_threads(1):
            assert bnc.get_num_threads() == 1
        assert bnc.get_num_threads() == 2
    assert bnc.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"):
        with bnc.num_threads(3):
            raise RuntimeError("boom")
    assert bnc.get_num_threads() == before


def test_openmp_enabled_is_bool():
    assert isinstance(bnc.openmp_enabled(), bool)


# ---------------------------------------------------------------------------
# Defaults and threadpoolctl, each in a fresh interpreter (no earlier
# set_num_threads, nothing else loading an OpenMP runtime).


def _run_python(code, env_updates=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("BNC_NUM_THREADS", "OMP_NUM_THREADS")}
    root = str(Path(bnc.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]]
                                                  if env.get("PYTHONPATH") else []))
    env.update(env_updates or {})
    # cwd = where the imported bnc lives: `-c` puts the cwd first on sys.path,
    # and a source checkout's bnc/ (without the built extension) must not win
    proc = subprocess.run([sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
                          env=env, capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


DEFAULT_CODE = """
    import json, os
    import bnc
    print(json.dumps({"n": bnc.get_num_threads(),
                      "cores": len(os.sched_getaffinity(0))}))
"""


@pytest.mark.parametrize("env,expected", [
    ({}, "cores"),
    ({"BNC_NUM_THREADS": "3"}, 3),
    ({"OMP_NUM_THREADS": "3"}, 3),
    ({"BNC_NUM_THREADS": "1", "OMP_NUM_THREADS": "3"}, 1),
    ({"BNC_NUM_THREADS": "5", "OMP_NUM_THREADS": "2"}, 5),
], ids=["none", "bnc", "omp", "bnc-wins", "bnc-wins-2"])
def test_default_thread_count(env, expected):
    out = _run_python(DEFAULT_CODE, env)
    assert out["n"] == (out["cores"] if expected == "cores" else expected)


def test_default_uses_usable_cores():
    """The process affinity mask counts, not the machine's core count."""
    if _cores() < 2:
        pytest.skip("needs at least 2 usable cores")
    out = _run_python("""
        import json, os
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        import bnc
        print(json.dumps({"n": bnc.get_num_threads()}))
    """)
    assert out["n"] == 1


def test_threadpoolctl_sees_openmp():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    del threadpoolctl
    out = _run_python("""
        import json
        import numpy, threadpoolctl
        before = [i["filepath"] for i in threadpoolctl.threadpool_info()
                  if i["user_api"] == "openmp"]
        import bnc
        bnc.batch_norm(numpy.ones((64, 4)), training=True)
        after = [i["filepath"] for i in threadpoolctl.threadpool_info()
                 if i["user_api"] == "openmp"]
        print(json.dumps({"enabled": bnc.openmp_enabled(), "before": before, "after": after}))
    """)
    if not out["enabled"]:
        pytest.skip("bnc was built without OpenMP")
    assert out["after"], "threadpoolctl lists no OpenMP runtime after importing bnc"
    assert set(out["after"]) - set(out["before"]), "no OpenMP runtime came with bnc"


def test_threadpoolctl_limit_is_honoured():
    pytest.importorskip("threadpoolctl")
    out = _run_python("""
        import json
        import numpy as np
        import threadpoolctl
        import bnc
        x = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
        default = bnc.get_num_threads()
        y0 = bnc.batch_norm(x, training=True)
        with threadpoolctl.threadpool_limits(1, "openmp"):
            inside = bnc.get_num_threads()
            y1 = bnc.batch_norm(x, training=True)
        after = bnc.get_num_threads()
        print(json.dumps({"enabled": bnc.openmp_enabled(), "default": default,
                          "inside": inside, "after": after,
                          "same": bool((y0.view(np.uint32) == y1.view(np.uint32)).all())}))
    """)
    if not out["enabled"]:
        pytest.skip("bnc was built without OpenMP")
    assert out["inside"] == 1
    assert out["after"] == out["default"]
    assert out["same"]
