"""A few steps of data-parallel training with synchronized batch norm.

    pip install ".[mpi]"
    mpiexec -n 4 python -m mpi4py examples/sync_train.py

A linear layer, batch norm and a squared loss, on a synthetic regression
problem whose global batch of 64 samples is split unevenly over the ranks.
Batch norm uses the statistics of the whole batch (bnc.distributed), the
gradients of the linear layer are summed over the ranks, and every rank ends
with the same weights and running statistics (checked at the end).
"""
import numpy as np
from mpi4py import MPI

from bnc import distributed as dist

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()

rng = np.random.default_rng(0)  # the same data and initial weights everywhere
X = rng.standard_normal((64, 10))
T = X @ rng.standard_normal((10, 4)) + 3.0
W = 0.1 * rng.standard_normal((10, 4))
gamma, beta = np.ones(4), np.zeros(4)
running_mean, running_var = np.zeros(4), np.ones(4)
lr = 0.1

# uneven shards: rank r gets a share proportional to r + 1
bounds = np.round(np.cumsum([0] + [r + 1 for r in range(size)]) / (size * (size + 1) / 2)
                  * len(X)).astype(int)
x, t = X[bounds[rank]:bounds[rank + 1]], T[bounds[rank]:bounds[rank + 1]]

for step in range(20):
    h = x @ W
    y, saved = dist.sync_batch_norm_forward(h, gamma, beta, comm=comm,
                                            running_mean=running_mean,
                                            running_var=running_var)
    loss = comm.allreduce(float(((y - t) ** 2).sum())) / len(X)
    dy = 2.0 * (y - t) / len(X)
    dh, dgamma, dbeta = dist.sync_batch_norm_backward(dy, h, gamma, saved, comm=comm)
    dW = comm.allreduce(x.T @ dh)  # the linear layer's gradient, summed over ranks
    W -= lr * dW
    gamma -= lr * dgamma  # already the global batch's gradients
    beta -= lr * dbeta
    if rank == 0 and step % 5 == 0:
        print(f"step {step:2d}  loss {loss:.4f}", flush=True)

state = np.concatenate([W.ravel(), gamma, beta, running_mean, running_var])
assert all(np.array_equal(state, s) for s in comm.allgather(state)), "ranks diverged"
if rank == 0:
    print(f"final loss {loss:.4f} on {size} ranks; all ranks hold the same state")
