"""The study's networks: small multilayer perceptrons written in NumPy, with
hand-written backward passes and a normalization layer from `bnc.layers`
after each hidden linear layer.

    x (N, 64) -> Linear -> Norm -> ReLU -> Linear -> Norm -> ReLU -> Linear -> 10 logits

Norm is one of: "none", "batch" (BatchNorm), "renorm" (BatchRenorm), "group"
(GroupNorm, 8 groups of features), "layer" (LayerNorm).
"""
from __future__ import annotations

import numpy as np

from bnc import fold_batch_norm, layers

NORMS = ("none", "batch", "renorm", "group", "layer")
DTYPE = np.float32


class Linear:
    """y = x @ W + b, W of shape (in, out), He-initialized times `scale`."""

    def __init__(self, n_in, n_out, rng, scale=1.0, dtype=DTYPE):
        std = scale * np.sqrt(2.0 / n_in)
        self.W = (std * rng.standard_normal((n_in, n_out))).astype(dtype)
        self.b = np.zeros(n_out, dtype)
        self._x = None

    def forward(self, x):
        self._x = x
        return x @ self.W + self.b

    def backward(self, g):
        self.dW = self._x.T @ g
        self.db = g.sum(axis=0)
        return g @ self.W.T

    def params(self):
        return [(self.W, "dW"), (self.b, "db")]


class ReLU:
    def forward(self, x):
        self._mask = x > 0
        return np.where(self._mask, x, 0).astype(x.dtype, copy=False)

    def backward(self, g):
        return np.where(self._mask, g, 0).astype(g.dtype, copy=False)


def make_norm(kind, width, dtype=DTYPE):
    if kind == "none":
        return None
    if kind == "batch":
        return layers.BatchNorm(width, dtype=dtype)
    if kind == "renorm":
        # Ioffe (2017): start as batch norm, then let r and d act (see train)
        return layers.BatchRenorm(width, rmax=1.0, dmax=0.0, dtype=dtype)
    if kind == "group":
        return layers.GroupNorm(8, width, dtype=dtype)
    if kind == "layer":
        return layers.LayerNorm(width, dtype=dtype)
    raise ValueError(f"unknown normalization {kind!r}; one of {NORMS}")


class MLP:
    """Two hidden layers of `width` units, each Linear -> Norm -> ReLU."""

    def __init__(self, norm, rng, width=128, scale=1.0, n_in=64, n_out=10, dtype=DTYPE):
        self.norm_kind = norm
        self.lin = [Linear(n_in, width, rng, scale, dtype), Linear(width, width, rng, scale, dtype),
                    Linear(width, n_out, rng, scale, dtype)]
        self.norms = [make_norm(norm, width, dtype), make_norm(norm, width, dtype)]
        self.relus = [ReLU(), ReLU()]
        self.folded = None

    def train(self, mode=True):
        for n in self.norms:
            if n is not None:
                n.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def forward(self, x):
        h = x
        for i in range(2):
            h = self.lin[i].forward(h)
            if self.norms[i] is not None:
                h = self.norms[i].forward(h)
            h = self.relus[i].forward(h)
        return self.lin[2].forward(h)

    def backward(self, g):
        g = self.lin[2].backward(g)
        for i in (1, 0):
            g = self.relus[i].backward(g)
            if self.norms[i] is not None:
                g = self.norms[i].backward(g)
            g = self.lin[i].backward(g)
        return g

    def params_and_grads(self):
        """(array, gradient) pairs of everything trainable."""
        out = []
        for lin in self.lin:
            out += [(lin.W, lin.dW), (lin.b, lin.db)]
        for n in self.norms:
            if n is not None:
                for name, grad in (("weight", n.grad_weight), ("bias", n.grad_bias)):
                    if getattr(n, name, None) is not None and grad is not None:
                        out.append((getattr(n, name), grad))
                n.zero_grad()
        return out

    # -- inference with batch norm folded into the linear layer before it ----

    def fold(self):
        """The eval-mode network with each BatchNorm folded into its Linear
        (bnc.fold_batch_norm): returns a list of (W, b) for a plain MLP."""
        assert self.norm_kind == "batch"
        out = []
        for i in range(2):
            n = self.norms[i]
            f = fold_batch_norm(self.lin[i].W, self.lin[i].b, n.running_mean, n.running_var,
                                n.weight, n.bias, eps=n.eps, out_channel_axis=-1)
            out.append((f.weight, f.bias))
        out.append((self.lin[2].W, self.lin[2].b))
        return out


def forward_folded(folded, x):
    """The folded network's forward (Linear -> ReLU, twice, then Linear)."""
    h = x
    for W, b in folded[:2]:
        h = np.maximum(h @ W + b, 0)
    W, b = folded[2]
    return h @ W + b


def softmax_xent(logits, labels):
    """Mean cross-entropy and its gradient with respect to the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = -np.log(p[np.arange(n), labels] + 1e-12).mean()
    g = p
    g[np.arange(n), labels] -= 1.0
    return float(loss), (g / n).astype(logits.dtype)


def accuracy(model, x, y, batch=512):
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model.forward(x[i:i + batch]).argmax(axis=1) == y[i:i + batch]).sum())
    model.train()
    return correct / len(x)
