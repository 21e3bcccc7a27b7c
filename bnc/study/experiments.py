"""The study's data, training loop and experiments. Each experiment returns
plain dicts/lists (the JSON of the report) and a one-line verdict."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from bnc.study.net import DTYPE, MLP, accuracy, forward_folded, softmax_xent

TARGET = 0.95  # validation accuracy that counts as "converged"


@dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def load_digits_split(seed=0, val_fraction=0.25) -> Data:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped inside the
    package), pixels scaled to [0, 1], split into train/validation."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError('the study needs scikit-learn: pip install "bnc[study]"') from e
    d = load_digits()
    x = (d.data / 16.0).astype(DTYPE)
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(val_fraction * len(x)))
    va, tr = idx[:n_val], idx[n_val:]
    return Data(x[tr], y[tr], x[va], y[va])


@dataclass
class Run:
    """One training run's history."""

    norm: str
    val_acc: List[float] = field(default_factory=list)
    train_acc: List[float] = field(default_factory=list)
    loss: List[float] = field(default_factory=list)
    seconds: List[float] = field(default_factory=list)  # cumulative, per epoch
    diverged: bool = False
    model: Optional[MLP] = None

    def epochs_to(self, target):
        for i, a in enumerate(self.val_acc):
            if a >= target:
                return i + 1
        return None

    def seconds_to(self, target):
        e = self.epochs_to(target)
        return None if e is None else self.seconds[e - 1]


def train(data, norm, *, lr=0.1, batch_size=32, scale=1.0, epochs=20, seed=0,
          momentum=0.9, track_train=True) -> Run:
    """SGD with momentum on the digits; returns the run (the model included)."""
    rng = np.random.default_rng(seed)
    model = MLP(norm, rng, scale=scale)
    vel = {}
    run = Run(norm)
    start = time.perf_counter()
    n = len(data.x_train)
    steps_per_epoch = max(n // batch_size, 1)
    for epoch in range(epochs):
        if norm == "renorm":  # Ioffe (2017): relax the clipping after a warm-up
            for layer in model.norms:
                layer.rmax, layer.dmax = (1.0, 0.0) if epoch < 2 else (3.0, 5.0)
        perm = rng.permutation(n)
        total = 0.0
        for s in range(steps_per_epoch):
            b = perm[s * batch_size:(s + 1) * batch_size]
            logits = model.forward(data.x_train[b])
            loss, g = softmax_xent(logits, data.y_train[b])
            if not np.isfinite(loss):
                run.diverged = True
                break
            total += loss
            model.backward(g)
            for k, (p, grad) in enumerate(model.params_and_grads()):
                v = vel.get(k)
                v = grad if v is None else momentum * v + grad
                vel[k] = v
                p -= (lr * v).astype(p.dtype, copy=False)
        if run.diverged:
            break
        run.seconds.append(time.perf_counter() - start)
        run.loss.append(total / steps_per_epoch)
        with np.errstate(all="ignore"):
            run.val_acc.append(accuracy(model, data.x_val, data.y_val))
            if track_train:
                run.train_acc.append(accuracy(model, data.x_train, data.y_train))
    run.model = model
    return run


def final(run: Run) -> float:
    """Final validation accuracy (a diverged run counts as chance, 0.1)."""
    return 0.1 if run.diverged or not run.val_acc else run.val_acc[-1]


def stats(values):
    v = np.asarray([np.nan if x is None else x for x in values], dtype=float)
    ok = v[~np.isnan(v)]
    return {"mean": float(ok.mean()) if ok.size else None,
            "std": float(ok.std()) if ok.size > 1 else 0.0 if ok.size else None,
            "n": int(ok.size), "of": int(v.size)}


Progress = Callable[[str], None]


# -- the experiments --------------------------------------------------------


def convergence(data, norms, seeds, epochs, progress) -> Dict:
    """Epochs and seconds to TARGET validation accuracy; the final runs are
    kept for the generalization and robustness experiments."""
    out, runs = {}, {}
    for norm in norms:
        rs = []
        for seed in seeds:
            progress(f"convergence: {norm}, seed {seed}")
            rs.append(train(data, norm, epochs=epochs, seed=seed))
        runs[norm] = rs
        out[norm] = {
            "epochs_to_target": stats([r.epochs_to(TARGET) for r in rs]),
            "seconds_to_target": stats([r.seconds_to(TARGET) for r in rs]),
            "final_val_acc": stats([final(r) for r in rs]),
            "val_acc_curve": np.mean([r.val_acc for r in rs], axis=0).tolist(),
            "train_acc": stats([r.train_acc[-1] for r in rs]),
            "gap": stats([r.train_acc[-1] - r.val_acc[-1] for r in rs]),
        }
    return out, runs


def grid(data, norms, seeds, epochs, progress, name, values, **fixed):
    """Final validation accuracy over a grid of one training argument."""
    out = {}
    for norm in norms:
        out[norm] = {}
        for v in values:
            progress(f"{name}: {norm}, {name}={v}")
            out[norm][str(v)] = stats([final(train(data, norm, epochs=epochs, seed=s,
                                                   track_train=False, **{name: v}, **fixed))
                                       for s in seeds])
    return out


def perturb_noise(x, sigma, rng):
    return (x + sigma * rng.standard_normal(x.shape)).astype(x.dtype)


def perturb_shift(x, brightness, contrast):
    """contrast around the image mean, then brightness added; clipped to [0, 1]."""
    m = x.mean(axis=1, keepdims=True)
    return np.clip((x - m) * contrast + m + brightness, 0.0, 1.0).astype(x.dtype)


def robustness(data, runs, noise_levels, shifts) -> Dict:
    """Validation accuracy of the trained models on perturbed inputs."""
    out = {}
    for norm, rs in runs.items():
        noise = {}
        for sigma in noise_levels:
            accs = []
            for r in rs:
                rng = np.random.default_rng(1234)
                accs.append(accuracy(r.model, perturb_noise(data.x_val, sigma, rng),
                                     data.y_val))
            noise[str(sigma)] = stats(accs)
        shift = {}
        for b, c in shifts:
            shift[f"b={b},c={c}"] = stats([accuracy(r.model, perturb_shift(data.x_val, b, c),
                                                    data.y_val) for r in rs])
        out[norm] = {"noise": noise, "shift": shift}
    return out


def inference_cost(data, runs, repeats) -> Dict:
    """Eval-mode forward of the validation set: batch norm as its own op vs
    folded into the preceding linear layer (bnc.fold_batch_norm)."""
    model = runs["batch"][0].model.eval()
    folded = model.fold()
    x = data.x_val
    ref = model.forward(x)
    got = forward_folded(folded, x)
    diff = float(np.max(np.abs(ref - got)) / max(np.max(np.abs(ref)), 1e-30))

    def best(fn):
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    best(lambda: model.forward(x))
    t_bn = best(lambda: model.forward(x))
    t_fold = best(lambda: forward_folded(folded, x))
    model.train()
    return {"separate_ms": 1e3 * t_bn, "folded_ms": 1e3 * t_fold,
            "speedup": t_bn / t_fold, "max_rel_diff": diff,
            "same_predictions": bool(np.array_equal(ref.argmax(1), got.argmax(1)))}
