"""A small convolutional network in NumPy, trained end to end with
hand-written backward passes, with bnc's batch norm as its normalization layer.

    conv 3x3 (im2col) -> batch norm (bnc) -> ReLU -> linear -> softmax cross-entropy

The data is built in: 8x8 images of four kinds of stroke (horizontal,
vertical, and the two diagonals) at random positions, with noise. Batch norm
is a bnc.layers.BatchNorm on the channels-last output of the convolution's
matrix product (channel_axis=-1): train() / eval() choose batch or running
statistics, backward() returns the input gradient and accumulates
grad_weight / grad_bias, and the optimizer updates the layer's weight and
bias arrays in place (the layer keeps them for its whole life).

    python examples/numpy_convnet.py [--epochs 8] [--seed 0]

prints the training loss per epoch and the test accuracy (inference mode:
batch norm with the running statistics).
"""
from __future__ import annotations

import argparse

import numpy as np

import bnc

SIZE, CLASSES, K = 8, 4, 3


def make_data(n, rng):
    """n noisy 8x8 images of a stroke of one of four directions; (x, labels)."""
    x = rng.normal(0.0, 0.3, (n, 1, SIZE, SIZE))
    labels = rng.integers(0, CLASSES, n)
    for img, label in zip(x[:, 0], labels):
        i, j = rng.integers(1, SIZE - 1, 2)
        for t in range(-2, 3):
            r, c = [(i, j + t), (i + t, j), (i + t, j + t), (i + t, j - t)][label]
            if 0 <= r < SIZE and 0 <= c < SIZE:
                img[r, c] += 1.0
    return x, labels


def im2col(x):
    """(N, Cin, H, W) -> (N, H, W, Cin * K * K): the 3x3 patches, zero padding 1."""
    N, C, H, W = x.shape
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([p[:, :, di:di + H, dj:dj + W] for di in range(K) for dj in range(K)], -1)
    return cols.transpose(0, 2, 3, 1, 4).reshape(N, H, W, C * K * K)


def col2im(dcols, shape):
    """The adjoint of im2col: sum the patch gradients back into (N, Cin, H, W)."""
    N, C, H, W = shape
    d = dcols.reshape(N, H, W, C, K * K).transpose(0, 3, 1, 2, 4)
    dp = np.zeros((N, C, H + 2, W + 2))
    for k in range(K * K):
        di, dj = divmod(k, K)
        dp[:, :, di:di + H, dj:dj + W] += d[..., k]
    return dp[:, :, 1:-1, 1:-1]


class Net:
    def __init__(self, channels=8, seed=0):
        rng = np.random.default_rng(seed)
        # float64 throughout (the layer's dtype), so the gradient check is exact
        self.bn = bnc.layers.BatchNorm(channels, channel_axis=-1, dtype=np.float64)
        # every trainable array, by name; "bn.weight" / "bn.bias" are the layer's
        # own arrays (not copies), so in-place updates of p train the layer
        self.p = {
            "conv": rng.normal(0, np.sqrt(2 / (K * K)), (K * K, channels)),  # (Cin*K*K, Cout)
            "bn.weight": self.bn.weight, "bn.bias": self.bn.bias,
            "fc": rng.normal(0, np.sqrt(1 / (channels * SIZE * SIZE)),
                             (channels * SIZE * SIZE, CLASSES)),
            "fc_b": np.zeros(CLASSES),
        }

    def forward(self, x, training):
        p = self.p
        cols = im2col(x)
        z = cols @ p["conv"]  # (N, H, W, Cout): channels last, as the matmul gives it
        # training: batch statistics and the running update (momentum 0.1);
        # eval: the running statistics, left as they are
        h = self.bn.train(training)(z)
        a = np.maximum(h, 0)
        flat = a.reshape(len(x), -1)
        logits = flat @ p["fc"] + p["fc_b"]
        return logits, (x, cols, a, flat)

    def loss_and_grads(self, x, labels):
        self.bn.zero_grad()  # the layer accumulates: start this step from None
        logits, (x, cols, a, flat) = self.forward(x, training=True)
        n = len(x)
        shifted = logits - logits.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -logp[np.arange(n), labels].mean()
        dlogits = np.exp(logp)
        dlogits[np.arange(n), labels] -= 1
        dlogits /= n
        g = {"fc": flat.T @ dlogits, "fc_b": dlogits.sum(axis=0)}
        da = (dlogits @ self.p["fc"].T).reshape(a.shape) * (a > 0)
        dz = self.bn.backward(da)  # grad_input; grad_weight / grad_bias accumulated
        g["bn.weight"], g["bn.bias"] = self.bn.grad_weight, self.bn.grad_bias
        g["conv"] = cols.reshape(-1, cols.shape[-1]).T @ dz.reshape(-1, dz.shape[-1])
        self.dx = col2im(dz @ self.p["conv"].T, x.shape)  # for the gradient check
        return loss, g

    def accuracy(self, x, labels):
        return float((self.forward(x, training=False)[0].argmax(axis=1) == labels).mean())


def train(epochs=8, seed=0, batch=64, lr=0.1, n_train=1024, n_test=512, verbose=False):
    """Train with SGD + momentum; returns (losses per epoch, test accuracy)."""
    rng = np.random.default_rng(seed)
    x, y = make_data(n_train, rng)
    xt, yt = make_data(n_test, rng)
    net = Net(seed=seed)
    velocity = {k: np.zeros_like(v) for k, v in net.p.items()}
    losses = []
    for epoch in range(epochs):
        order = rng.permutation(n_train)
        total = 0.0
        for s in range(0, n_train, batch):
            idx = order[s:s + batch]
            loss, grads = net.loss_and_grads(x[idx], y[idx])
            total += loss * len(idx)
            for k, param in net.p.items():  # in place: the layer sees its new weights
                velocity[k] = 0.9 * velocity[k] - lr * grads[k]
                param += velocity[k]
        losses.append(total / n_train)
        if verbose:
            print(f"epoch {epoch + 1}: training loss {losses[-1]:.4f}")
    acc = net.accuracy(xt, yt)
    if verbose:
        print(f"test accuracy (running statistics): {acc:.3f}")
    return losses, acc


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    train(args.epochs, args.seed, verbose=True)
