"""Run by tests/test_distributed.py under mpiexec: synchronized batch norm on
every rank's shard against single-process bnc on the whole batch.

    mpiexec -n 3 python -m mpi4py tests/mpi/sync_bn.py check
    ... sync_bn.py mismatch | empty | bad-arg | crash

Exits non-zero (python -m mpi4py aborts every rank) on any failure.
"""
import sys

import numpy as np
from mpi4py import MPI

import bnc
from bnc import distributed as dist

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def close(a, b, tol, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-300)
    assert a.shape == b.shape and err <= tol, f"rank {rank}: {what}: error {err:.2e} > {tol}"


def splits(N):
    """Uneven splits of N samples over the ranks, one with an empty rank."""
    out = [[N // size + (r < N % size) for r in range(size)]]
    if size > 1:
        uneven = [1] * (size - 1)
        out.append(uneven + [N - sum(uneven)])
        out.append([0] + [N // (size - 1) + (r < N % (size - 1)) for r in range(size - 1)])
    return out


def check():
    cases = 0
    for dtype in (np.float64, np.float32):
        for shape, ca in (((9, 5, 3, 4), 1), ((9, 3, 4, 5), -1), ((11, 6), 1)):
            N = shape[0]
            rng = np.random.default_rng([7, N, shape[1]])
            full = (2.0 + 3.0 * rng.standard_normal(shape)).astype(dtype)
            gfull = rng.standard_normal(shape).astype(dtype)
            C = shape[ca]
            sd = np.float64 if dtype == np.float64 else np.float32
            w = rng.uniform(0.5, 1.5, C).astype(sd)
            b = rng.standard_normal(C).astype(sd)
            for split in splits(N):
                lo = sum(split[:rank])
                x, g = full[lo:lo + split[rank]], gfull[lo:lo + split[rank]]
                # single process on the whole batch
                rm1, rv1 = np.zeros(C, sd), np.ones(C, sd)
                y1 = bnc.batch_norm(full, w, b, rm1, rv1, training=True, channel_axis=ca)
                _, s1 = bnc.batch_norm_forward(full, w, b, channel_axis=ca)
                d1 = bnc.batch_norm_backward(gfull, full, w, s1, channel_axis=ca)
                # synchronized, this rank's shard
                rm, rv = np.zeros(C, sd), np.ones(C, sd)
                nbt = np.array(0, np.int64)
                y, s = dist.sync_batch_norm_forward(x, w, b, comm=comm, running_mean=rm,
                                                    running_var=rv, channel_axis=ca,
                                                    num_batches_tracked=nbt)
                d = dist.sync_batch_norm_backward(g, x, w, s, comm=comm, channel_axis=ca)
                tol = TOL[dtype]
                assert s.count == full.size // C and int(nbt) == 1
                if x.shape[0]:
                    close(y, y1[lo:lo + split[rank]], tol, "y")
                    close(d.grad_input, d1.grad_input[lo:lo + split[rank]], tol, "dx")
                else:
                    assert y.shape == x.shape and d.grad_input.shape == x.shape
                close(s.mean, s1.mean, tol, "mean")
                close(s.var, s1.var, tol, "var")
                close(s.invstd, s1.invstd, tol, "invstd")
                close(rm, rm1, tol, "running_mean")
                close(rv, rv1, tol, "running_var")
                close(d.grad_weight, d1.grad_weight, tol, "grad_weight")
                close(d.grad_bias, d1.grad_bias, tol, "grad_bias")
                # every rank holds the same bits
                mine = b"".join(np.ascontiguousarray(a).tobytes() for a in
                                (s.mean, s.invstd, s.var, rm, rv, d.grad_weight, d.grad_bias))
                assert len(set(comm.allgather(mine))) == 1, "ranks differ"
                cases += 1
    return cases


def check_layer():
    """SyncBatchNorm on the shards vs bnc.layers.BatchNorm on the whole batch,
    three training steps then eval: outputs, grad_input, accumulated grads,
    running statistics; and a state dict equal on every rank."""
    N, C = 10, 4
    rng = np.random.default_rng(5)
    full = rng.standard_normal((3, N, C, 6)) * 2 + 1
    gfull = rng.standard_normal((3, N, C, 6))
    split = [N // size + (r < N % size) for r in range(size)]
    lo, hi = sum(split[:rank]), sum(split[:rank + 1])
    ref = bnc.layers.BatchNorm(C, dtype=np.float64, momentum=None)
    lay = dist.SyncBatchNorm(C, dtype=np.float64, momentum=None, comm=comm)
    for step in range(3):
        y1 = ref.forward(full[step])
        d1 = ref.backward(gfull[step])
        y = lay.forward(full[step][lo:hi])
        d = lay.backward(gfull[step][lo:hi])
        if hi > lo:
            close(y, y1[lo:hi], 1e-12, "layer y")
            close(d, d1[lo:hi], 1e-12, "layer dx")
    close(lay.grad_weight, ref.grad_weight, 1e-12, "layer grad_weight")
    close(lay.grad_bias, ref.grad_bias, 1e-12, "layer grad_bias")
    for k, v in ref.state_dict().items():
        close(lay.state_dict()[k], v, 1e-12, f"layer {k}")
    lay.eval()
    ref.eval()
    close(lay.forward(full[0][lo:hi]), ref.forward(full[0])[lo:hi], 1e-12, "layer eval y")
    mine = b"".join(v.tobytes() for v in lay.state_dict().values())
    assert len(set(comm.allgather(mine))) == 1, "ranks' layer states differ"


def expect_same_error(fn):
    """fn raises ValueError on every rank, with the same message everywhere."""
    try:
        fn()
    except ValueError as e:
        msg = str(e)
    else:
        msg = None
    msgs = comm.allgather(msg)
    assert msgs[rank] is not None, f"rank {rank}: no error"
    assert len(set(msgs)) == 1, f"messages differ: {msgs}"
    return msgs[0]


def main(mode):
    x = np.random.default_rng(rank).standard_normal((4, 3, 5))
    if mode == "check":
        n = check()
        check_layer()
        print(f"rank {rank}: {n} cases ok", flush=True)
    elif mode == "mismatch":
        xc = np.random.default_rng(rank).standard_normal((4, 3 + (rank == 1), 5))
        print(expect_same_error(lambda: dist.sync_batch_norm_forward(xc, comm=comm)))
        xd = x.astype(np.float32 if rank == size - 1 else np.float64)
        print(expect_same_error(lambda: dist.sync_batch_norm_forward(xd, comm=comm)))
    elif mode == "empty":
        print(expect_same_error(lambda: dist.sync_batch_norm_forward(x[:0], comm=comm)))
    elif mode == "bad-arg":
        w = np.ones(3 + (rank == 0))  # wrong weight on rank 0 only
        print(expect_same_error(lambda: dist.sync_batch_norm_forward(x, w, comm=comm)))
        y, s = dist.sync_batch_norm_forward(x, comm=comm)
        g = x if rank else x[:, :2]  # wrong grad_out on rank 0 only
        print(expect_same_error(lambda: dist.sync_batch_norm_backward(g, x, None, s,
                                                                      comm=comm)))
    elif mode == "crash":
        if rank == 1:
            raise RuntimeError("rank 1 crashes before the collective")
        dist.sync_batch_norm_forward(x, comm=comm)  # the others wait here
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1])
