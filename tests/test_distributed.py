"""Synchronized batch norm over MPI and exact dataset statistics with Dask.

The MPI tests launch `mpiexec -n K python -m mpi4py tests/mpi/sync_bn.py MODE`
as a subprocess (python -m mpi4py aborts every rank when one raises) with a
timeout, so a failing or crashing rank fails the test instead of hanging the
suite. They skip only when mpi4py is not installed (pip install "bnc[mpi]").
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bnc

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "mpi" / "sync_bn.py"


def _mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed: pip install \"bnc[mpi]\"")
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    assert found, "mpi4py is installed but no mpiexec was found (pip install mpich)"
    return found


def _run(ranks, mode, timeout=240):
    env = dict(os.environ)
    # the ranks import the same bnc as this test process
    root = str(Path(bnc.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("BNC_NUM_THREADS", "1")  # ranks share 2 cores
    return subprocess.run([_mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py",
                           str(SCRIPT), mode], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_sync_equals_single_process(ranks):
    """Outputs, saved and running statistics, dx, dweight, dbias equal
    single-process batch norm on the whole batch (float64 1e-12, float32
    1e-5), with uneven splits and a rank holding no samples; every rank holds
    the same bits. The SyncBatchNorm layer equals bnc.layers.BatchNorm on the
    whole batch over three steps."""
    r = _run(ranks, "check")
    assert r.returncode == 0, r.stdout + r.stderr
    for k in range(ranks):
        assert f"rank {k}: " in r.stdout and "cases ok" in r.stdout


@pytest.mark.parametrize("mode,messages", [
    ("mismatch", ["disagree on the number of channels", "disagree on the dtype"]),
    ("empty", ["global batch is empty"]),
    ("bad-arg", ["rank 0 failed: ValueError: weight", "rank 0 failed: ValueError: grad_out"]),
])
@pytest.mark.parametrize("ranks", [2, 3])
def test_errors_are_raised_on_every_rank(mode, messages, ranks):
    """The script checks that every rank raised the same ValueError; here its
    text is checked."""
    r = _run(ranks, mode, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for m in messages:
        assert m in r.stdout, r.stdout


def test_a_crashing_rank_does_not_hang():
    r = _run(3, "crash", timeout=60)  # a hang fails with TimeoutExpired
    assert r.returncode != 0
    assert "rank 1 crashes before the collective" in r.stderr


def test_sync_with_one_process_matches_without_mpi():
    """In this process (COMM_WORLD of size 1): the sync forward/backward is
    batch norm."""
    pytest.importorskip("mpi4py", reason="mpi4py is not installed: pip install \"bnc[mpi]\"")
    from bnc import distributed as dist

    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4, 7))
    g = rng.standard_normal(x.shape)
    y, s = dist.sync_batch_norm_forward(x)
    y1, s1 = bnc.batch_norm_forward(x)
    np.testing.assert_allclose(y, y1, rtol=1e-12, atol=1e-12)
    d = dist.sync_batch_norm_backward(g, x, None, s)
    d1 = bnc.batch_norm_backward(g, x, None, s1)
    for a, b in zip(d, d1):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channel_axis", [1, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dataset_stats_with_dask(channel_axis, dtype):
    da = pytest.importorskip("dask.array", reason="dask is not installed: pip install "
                                                  "\"bnc[dask]\"")
    from bnc.distributed import dataset_stats

    rng = np.random.default_rng(11)
    data = (5.0 + 2.0 * rng.standard_normal((37, 6, 5, 4))).astype(dtype)
    if channel_axis == -1:
        data = np.ascontiguousarray(np.moveaxis(data, 1, -1))
    arr = da.from_array(data, chunks=(5, 3, 5, 2) if channel_axis == 1 else (5, 3, 2, 6))
    mean, var, count = dataset_stats(arr, channel_axis=channel_axis)
    ax = channel_axis % data.ndim
    red = tuple(i for i in range(data.ndim) if i != ax)
    d64 = data.astype(np.float64)
    assert count == data.size // data.shape[ax]
    tol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(mean, d64.mean(axis=red), rtol=tol)
    np.testing.assert_allclose(var, d64.var(axis=red), rtol=tol * 10)


def test_dataset_stats_bad_input():
    da = pytest.importorskip("dask.array", reason="dask is not installed")
    from bnc.distributed import dataset_stats

    with pytest.raises(TypeError, match="data must be a dask"):
        dataset_stats(np.ones((3, 4)))
    with pytest.raises(TypeError, match="dtype"):
        dataset_stats(da.ones((3, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="empty"):
        dataset_stats(da.ones((0, 4)))
    with pytest.raises(np.exceptions.AxisError, match="channel_axis"):
        dataset_stats(da.ones((3, 4)), channel_axis=5)


def test_readme_example_trains_on_two_ranks():
    """examples/sync_train.py (the README's mpiexec command) runs, the loss
    falls, and the ranks end with the same state (the example asserts it)."""
    env = dict(os.environ)
    root = str(Path(bnc.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    example = HERE.parent / "examples" / "sync_train.py"
    r = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", str(example)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    losses = [float(line.split()[-1]) for line in r.stdout.splitlines()
              if line.startswith("step")]
    assert len(losses) >= 3 and losses[-1] < 0.1 * losses[0]
    assert "all ranks hold the same state" in r.stdout


def test_too_few_values_for_the_correction_write_nothing():
    """A global count not above `correction` raises before out= or the
    running statistics are written (it raised after writing out= before)."""
    pytest.importorskip("mpi4py", reason="mpi4py is not installed: pip install \"bnc[mpi]\"")
    from bnc import distributed as dist

    x = np.arange(6.0).reshape(2, 3)
    out = np.full_like(x, 7.0)
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="correction"):
        dist.sync_batch_norm_forward(x, running_mean=rm, running_var=rv, correction=2,
                                     out=out)
    assert (out == 7.0).all() and not rm.any() and (rv == 1.0).all()
