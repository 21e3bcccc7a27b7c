"""Synchronized batch norm over MPI: one forward + backward, synchronized vs
local, and the share of the exchange, for C = 64 .. 2048.

    mpiexec -n 2 python -m mpi4py bench/distributed.py [--repeats 30] [--quick]

Every rank holds a (8, C, 14, 14) float32 shard. "local" is bnc's
batch_norm_forward + batch_norm_backward on the shard alone; "sync" is
bnc.distributed's pair over the whole batch; "exchange" times the same
collectives alone (the shape check and the statistics allgather of the
forward, the sums allgather of the backward) on arrays of the same size.
Times are medians over repeats of the slowest rank's time (every rank waits
for the slowest). Rank 0 prints the table.
"""
import argparse
import time

import numpy as np
from mpi4py import MPI

import bnc
from bnc import distributed as dist

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def timed(fn, repeats):
    """Median over repeats of the slowest rank's wall time of fn(), in ms."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t = time.perf_counter()
        fn()
        times.append(comm.allreduce(time.perf_counter() - t, op=MPI.MAX))
    return 1e3 * float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="C = 64 and 256 only, 5 repeats")
    a = ap.parse_args()
    chans = [64, 256] if a.quick else [64, 128, 256, 512, 1024, 2048]
    reps = 5 if a.quick else a.repeats
    if rank == 0:
        print(f"synchronized batch norm, {size} ranks (MPI: "
              f"{MPI.Get_library_version().splitlines()[0].strip()}), shard (8, C, 14, 14) "
              f"float32, {bnc.get_num_threads()} thread(s) per rank; ms, median of {reps}")
        print(f"{'C':>6} {'local':>9} {'sync':>9} {'exchange':>9} {'sync/local':>11} "
              f"{'exch share':>11}")
    for C in chans:
        rng = np.random.default_rng([rank, C])
        x = rng.standard_normal((8, C, 14, 14)).astype(np.float32)
        g = rng.standard_normal(x.shape).astype(np.float32)
        w, b = np.ones(C, np.float32), np.zeros(C, np.float32)

        def local():
            y, s = bnc.batch_norm_forward(x, w, b)
            bnc.batch_norm_backward(g, x, w, s)

        def sync():
            y, s = dist.sync_batch_norm_forward(x, w, b, comm=comm)
            dist.sync_batch_norm_backward(g, x, w, s, comm=comm)

        fwd_row, bwd_row = np.zeros(2 * C + 1), np.zeros(2 * C)

        def exchange():
            dist._agree(comm, None, C, x.dtype, "bench")
            dist._gather_rows(comm, fwd_row)
            dist._agree(comm, None, C, x.dtype, "bench")
            dist._gather_rows(comm, bwd_row)

        tl, ts, te = timed(local, reps), timed(sync, reps), timed(exchange, reps)
        if rank == 0:
            print(f"{C:>6} {tl:>9.3f} {ts:>9.3f} {te:>9.3f} {ts / tl:>10.2f}x "
                  f"{100 * te / ts:>10.0f}%", flush=True)


if __name__ == "__main__":
    main()
