#!/usr/bin/env python3
"""Benchmark the normalization family beyond batch norm: bnc against the usual
NumPy code and PyTorch CPU (when installed), in one process and one run.

For every (op, shape, dtype, threads): median and min time of each library
(interleaved, as in run.py), the speed-up of bnc over each, and a check of
each library's output against bnc's (max abs difference / max abs value).

Usage (from the repository root)::

    python bench/family.py --quick
    python bench/family.py --threads 1,2 --ops layer_norm,rms_norm

Ops: layer_norm, layer_norm_backward, rms_norm, rms_norm_backward,
batch_renorm, batch_renorm_backward (PyTorch has no batch renorm: its
column is batch norm's kernel, the cost batch renorm is compared against),
group_norm, group_norm_backward, instance_norm, instance_norm_backward when
bnc has them, and bn_relu_res, bn_relu_res_backward: the fused batch norm
y = relu(bn(x) + r) (training). Group and instance norm and bn_relu_res run
channels first (NCHW) and channels last (NHWC: the array is (N, H, W, C),
channel_axis=-1; torch gets the channels_last view of the same memory). For
bn_relu_res the "np" column is bnc unfused: bnc's batch norm composed with
NumPy (forward: np.add and np.maximum with out=; backward: the mask
dy * (y > 0) into a buffer, then bnc's batch norm backward; dz is the
residual's gradient); the torch column is torch.relu(F.batch_norm(x) + r)
and its autograd backward (the graph kept, grads reset per call). See
bench/README.md.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import _import_bnc, _import_torch, fmt_ms, time_calls  # noqa: E402

EPS = 1e-5

# (op, shape, extra); rows are the trailing axis for layer/RMS norm
FULL = [
    ("layer_norm", (64, 197, 768)), ("layer_norm", (8192, 1024)), ("layer_norm", (64, 64)),
    ("rms_norm", (64, 197, 768)), ("rms_norm", (8192, 1024)),
    ("batch_renorm", (32, 64, 56, 56)), ("batch_renorm", (256, 1024)),
    ("group_norm", (32, 64, 56, 56)), ("group_norm", (8, 256, 14, 14)),
    ("group_norm", (32, 64, 56, 56), "nhwc"), ("group_norm", (8, 256, 14, 14), "nhwc"),
    ("instance_norm", (32, 64, 56, 56)), ("instance_norm", (8, 256, 14, 14)),
    ("instance_norm", (32, 64, 56, 56), "nhwc"), ("instance_norm", (8, 256, 14, 14), "nhwc"),
    ("bn_relu_res", (32, 64, 56, 56)), ("bn_relu_res", (32, 64, 56, 56), "nhwc"),
]
QUICK = [("layer_norm", (64, 197, 768)), ("rms_norm", (64, 197, 768)),
         ("batch_renorm", (32, 64, 56, 56)), ("group_norm", (32, 64, 56, 56)),
         ("instance_norm", (32, 64, 56, 56), "nhwc"), ("bn_relu_res", (32, 64, 56, 56)),
         ("bn_relu_res", (32, 64, 56, 56), "nhwc")]
GROUPS = 32


def rel_diff(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def setup(op, shape, dtype, rng, layout="nchw"):
    """The inputs of one case: x, dy and the parameters, bnc's own dtypes.
    layout "nhwc": x and dy are (N, *spatial, C) arrays; shape stays NCHW."""
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    if layout == "nhwc":
        x, dy = (np.ascontiguousarray(np.moveaxis(a, 1, -1)) for a in (x, dy))
    if op in ("layer_norm", "rms_norm"):
        n = shape[-1]
    else:
        n = shape[1]
    w = (rng.random(n) + 0.5).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    return x, dy, w, b


def make(bnc, torch, op, x, dy, w, b, thr, layout="nchw"):
    """{library: callable} for the forward and the backward of op."""
    ax = -1 if layout == "nhwc" else 1
    F = torch.nn.functional if torch is not None else None
    t = (lambda a: torch.from_numpy(a)) if torch is not None else None
    fwd, bwd = {}, {}
    if op == "layer_norm":
        y, saved = bnc.layer_norm_forward(x, w, b, n_threads=thr)
        fwd["bnc"] = lambda: bnc.layer_norm_forward(x, w, b, n_threads=thr)[0]
        bwd["bnc"] = lambda: bnc.layer_norm_backward(dy, x, w, saved, n_threads=thr)[0]

        def np_fwd():
            m = x.mean(-1, keepdims=True)
            v = x.var(-1, keepdims=True)
            return (x - m) / np.sqrt(v + EPS) * w + b

        def np_bwd():
            m = x.mean(-1, keepdims=True)
            inv = 1 / np.sqrt(x.var(-1, keepdims=True) + EPS)
            xh = (x - m) * inv
            g = dy * w
            return inv * (g - g.mean(-1, keepdims=True)
                          - xh * (g * xh).mean(-1, keepdims=True))
        fwd["numpy"], bwd["numpy"] = np_fwd, np_bwd
        if torch is not None:
            tx, tdy, tw, tb = t(x), t(dy), t(w), t(b)
            ns = [x.shape[-1]]
            _, tm, tr = torch.ops.aten.native_layer_norm(tx, ns, tw, tb, EPS)
            fwd["torch"] = lambda: F.layer_norm(tx, ns, tw, tb, EPS).numpy()
            bwd["torch"] = lambda: torch.ops.aten.native_layer_norm_backward(
                tdy, tx, ns, tm, tr, tw, tb, [True, True, True])[0].numpy()
    elif op == "rms_norm":
        eps = float(np.finfo(np.float32 if x.dtype != np.float64 else np.float64).eps)
        y, saved = bnc.rms_norm_forward(x, w, n_threads=thr)
        fwd["bnc"] = lambda: bnc.rms_norm_forward(x, w, n_threads=thr)[0]
        bwd["bnc"] = lambda: bnc.rms_norm_backward(dy, x, w, saved, n_threads=thr)[0]

        def np_fwd():
            return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

        def np_bwd():
            inv = 1 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
            xh = x * inv
            g = dy * w
            return inv * (g - xh * (g * xh).mean(-1, keepdims=True))
        fwd["numpy"], bwd["numpy"] = np_fwd, np_bwd
        if torch is not None:
            tx, tdy, tw = t(x), t(dy), t(w)
            ns = [x.shape[-1]]
            fwd["torch"] = lambda: F.rms_norm(tx, ns, tw).numpy()

            def torch_bwd():  # no aten backward op: autograd (its overhead included)
                xr = tx.detach().requires_grad_(True)
                F.rms_norm(xr, ns, tw).backward(tdy)
                return xr.grad.numpy()
            bwd["torch"] = torch_bwd
    elif op == "batch_renorm":
        C = x.shape[1]
        rm = np.zeros(C, w.dtype)
        rv = np.ones(C, w.dtype)
        y, saved = bnc.batch_renorm_forward(x, w, b, rm, rv, rmax=3.0, dmax=5.0, n_threads=thr)
        fwd["bnc"] = lambda: bnc.batch_renorm_forward(x, w, b, rm, rv, rmax=3.0, dmax=5.0,
                                                      n_threads=thr)[0]
        bwd["bnc"] = lambda: bnc.batch_renorm_backward(dy, x, w, saved, n_threads=thr)[0]
        axes = tuple(a for a in range(x.ndim) if a != 1)
        bs = [1] * x.ndim
        bs[1] = -1

        def np_fwd():
            m = x.mean(axes, keepdims=True)
            sb = np.sqrt(x.var(axes, keepdims=True) + EPS)
            s = np.sqrt(rv.reshape(bs) + EPS)
            r = np.clip(sb / s, 1 / 3.0, 3.0)
            d = np.clip((m - rm.reshape(bs)) / s, -5.0, 5.0)
            return ((x - m) / sb * r + d) * w.reshape(bs) + b.reshape(bs)
        def np_bwd():
            # the backward is batch norm's with weight * r (r, d constants)
            m = x.mean(axes, keepdims=True)
            sb = np.sqrt(x.var(axes, keepdims=True) + EPS)
            r = np.clip(sb / np.sqrt(rv.reshape(bs) + EPS), 1 / 3.0, 3.0)
            xh = (x - m) / sb
            g = dy * (w.reshape(bs) * r)
            return (g - g.mean(axes, keepdims=True)
                    - xh * (g * xh).mean(axes, keepdims=True)) / sb
        fwd["numpy"], bwd["numpy"] = np_fwd, np_bwd
        # PyTorch has no batch renorm: its columns time batch norm's forward
        # and backward kernels, the closest existing code
        if torch is not None:
            tx, tdy, tw, tb = t(x), t(dy), t(w), t(b)
            fwd["torch"] = lambda: F.batch_norm(tx, None, None, tw, tb, True).numpy()
            _, tsm, tsi = torch.ops.aten.native_batch_norm(tx, tw, tb, None, None, True, 0.1,
                                                            EPS)
            bwd["torch"] = lambda: torch.ops.aten.native_batch_norm_backward(
                tdy, tx, tw, None, None, tsm, tsi, True, EPS, [True, True, True])[0].numpy()
    elif op == "group_norm":
        if not hasattr(bnc, "group_norm_forward"):
            return None, None
        y, saved = bnc.group_norm_forward(x, GROUPS, w, b, channel_axis=ax, n_threads=thr)
        fwd["bnc"] = lambda: bnc.group_norm_forward(x, GROUPS, w, b, channel_axis=ax,
                                                    n_threads=thr)[0]
        bwd["bnc"] = lambda: bnc.group_norm_backward(dy, x, GROUPS, w, saved, channel_axis=ax,
                                                     n_threads=thr)[0]
        bs = [1] * x.ndim
        bs[ax] = -1

        def np_fwd():
            # channels last: groups are (N, HW, G, C/G) slices; the usual code
            # reduces over every axis but the sample's and the group's
            if ax == 1:
                g, red = x.reshape(x.shape[0], GROUPS, -1), (-1,)
            else:
                g, red = x.reshape(x.shape[0], -1, GROUPS, x.shape[-1] // GROUPS), (1, 3)
            m = g.mean(red, keepdims=True)
            v = g.var(red, keepdims=True)
            return ((g - m) / np.sqrt(v + EPS)).reshape(x.shape) * w.reshape(bs) \
                + b.reshape(bs)
        def groups(a):
            # (N, G, rest) views and the axes a group reduces over (see np_fwd)
            if ax == 1:
                return a.reshape(a.shape[0], GROUPS, -1), (-1,)
            return a.reshape(a.shape[0], -1, GROUPS, a.shape[-1] // GROUPS), (1, 3)

        def np_bwd():
            g, red = groups(x)
            m = g.mean(red, keepdims=True)
            inv = 1 / np.sqrt(g.var(red, keepdims=True) + EPS)
            xh = (g - m) * inv
            gw, _ = groups(dy * w.reshape(bs))
            return (inv * (gw - gw.mean(red, keepdims=True)
                           - xh * (gw * xh).mean(red, keepdims=True))).reshape(x.shape)
        fwd["numpy"], bwd["numpy"] = np_fwd, np_bwd
        if torch is not None:
            tx, tdy, tw, tb = _torch_view(t, x, ax), _torch_view(t, dy, ax), t(w), t(b)
            fwd["torch"] = lambda: _numpy_view(F.group_norm(tx, GROUPS, tw, tb, EPS), ax)
            N, C = tx.shape[0], tx.shape[1]
            HW = int(np.prod(tx.shape[2:]))
            _, tgm, tgr = torch.ops.aten.native_group_norm(tx, tw, tb, N, C, HW, GROUPS, EPS)
            bwd["torch"] = lambda: _numpy_view(torch.ops.aten.native_group_norm_backward(
                tdy, tx, tgm, tgr, tw, N, C, HW, GROUPS, [True, True, True])[0], ax)
    elif op == "instance_norm":
        if not hasattr(bnc, "instance_norm_forward"):
            return None, None
        y, saved = bnc.instance_norm_forward(x, w, b, channel_axis=ax, n_threads=thr)
        fwd["bnc"] = lambda: bnc.instance_norm_forward(x, w, b, channel_axis=ax,
                                                       n_threads=thr)[0]
        bwd["bnc"] = lambda: bnc.instance_norm_backward(dy, x, w, saved, channel_axis=ax,
                                                        n_threads=thr)[0]
        red = tuple(range(2, x.ndim)) if ax == 1 else tuple(range(1, x.ndim - 1))
        bs = [1] * x.ndim
        bs[ax] = -1
        wb, bb = w.reshape(bs), b.reshape(bs)

        def np_fwd():
            m = x.mean(red, keepdims=True)
            v = x.var(red, keepdims=True)
            return (x - m) / np.sqrt(v + EPS) * wb + bb

        def np_bwd():
            m = x.mean(red, keepdims=True)
            inv = 1 / np.sqrt(x.var(red, keepdims=True) + EPS)
            xh = (x - m) * inv
            g = dy * wb
            return inv * (g - g.mean(red, keepdims=True)
                          - xh * (g * xh).mean(red, keepdims=True))
        fwd["numpy"], bwd["numpy"] = np_fwd, np_bwd
        if torch is not None:
            tx, tdy = _torch_view(t, x, ax), _torch_view(t, dy, ax)
            tw, tb = t(w), t(b)
            fwd["torch"] = lambda: _numpy_view(F.instance_norm(tx, None, None, tw, tb, True,
                                                               0.1, EPS), ax)

            def torch_bwd():  # a composite op (batch norm inside): autograd
                xr = tx.detach().requires_grad_(True)
                F.instance_norm(xr, None, None, tw, tb, True, 0.1, EPS).backward(tdy)
                return _numpy_view(xr.grad, ax)
            bwd["torch"] = torch_bwd
    elif op == "bn_relu_res":
        if not hasattr(bnc, "ResidualGrads"):
            return None, None
        r = (dy[::-1] * 0.5).copy()  # the residual: another array like x
        y, saved = bnc.batch_norm_forward(x, w, b, channel_axis=ax, activation="relu",
                                          residual=r, n_threads=thr)
        fwd["bnc"] = lambda: bnc.batch_norm_forward(x, w, b, channel_axis=ax,
                                                    activation="relu", residual=r,
                                                    n_threads=thr)[0]
        bwd["bnc"] = lambda: bnc.batch_norm_backward(
            dy, x, w, saved, channel_axis=ax, activation="relu", y=y, residual=True,
            n_threads=thr).grad_input

        def unfused_fwd():
            u = bnc.batch_norm_forward(x, w, b, channel_axis=ax, n_threads=thr)[0]
            np.add(u, r, out=u)
            return np.maximum(u, 0, out=u)

        mask, dz = np.empty(x.shape, bool), np.empty_like(x)

        def unfused_bwd():
            np.greater(y, 0, out=mask)
            np.multiply(dy, mask, out=dz)  # dz: also the residual's gradient
            return bnc.batch_norm_backward(dz, x, w, saved, channel_axis=ax,
                                           n_threads=thr).grad_input
        fwd["numpy"], bwd["numpy"] = unfused_fwd, unfused_bwd
        if torch is not None:
            tx, tr, tdy = (_torch_view(t, a, ax) for a in (x, r, dy))
            tw, tb = t(w), t(b)
            fwd["torch"] = lambda: _numpy_view(
                torch.relu(F.batch_norm(tx, None, None, tw, tb, True) + tr), ax)
            leaves = [v.detach().requires_grad_(True) for v in (tx, tr, tw, tb)]
            yt = torch.relu(F.batch_norm(leaves[0], None, None, leaves[2], leaves[3], True)
                            + leaves[1])

            def torch_bwd():
                for v in leaves:
                    v.grad = None
                yt.backward(tdy, retain_graph=True)
                return _numpy_view(leaves[0].grad, ax)
            bwd["torch"] = torch_bwd
    return fwd, bwd


def _torch_view(t, a, ax):
    """torch view of a NumPy array: channels last (ax=-1) as the logical NCHW
    tensor in torch's channels_last memory format (same memory)."""
    v = t(a)
    return v if ax == 1 else v.permute(0, v.dim() - 1, *range(1, v.dim() - 1))


def _numpy_view(v, ax):
    """A torch result as a NumPy array in bnc's layout (the inverse of _torch_view)."""
    return v.numpy() if ax == 1 else v.permute(0, *range(2, v.dim()), 1).numpy()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 cases, smaller budget")
    p.add_argument("--threads", default=None, help="comma list (default: 1 and all cores)")
    p.add_argument("--ops", default=None, help="comma list of ops (default: all)")
    p.add_argument("--budget", type=float, default=None, help="seconds per measurement")
    p.add_argument("--repeats", type=int, default=None, help="most timed repeats")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    args = p.parse_args(argv)
    bnc = _import_bnc()
    torch, torch_info = _import_torch(args.no_torch)
    ncores = len(os.sched_getaffinity(0))
    threads = ([int(v) for v in args.threads.split(",")] if args.threads
               else sorted({1, ncores}))
    budget = args.budget or (0.1 if args.quick else 0.3)
    repeats = args.repeats or (10 if args.quick else 30)
    cases = QUICK if args.quick else FULL
    if args.ops:
        keep = {o.split("_backward")[0] for o in args.ops.split(",")}
        cases = [c for c in cases if c[0] in keep]
    print(f"bnc {bnc.__version__}; numpy {np.__version__}; torch {torch_info}")
    print("times in ms (median, min); vs: their median / bnc median; diff: max |other - bnc|"
          " / max |bnc| of the forward")
    head = (f"{'op':22s} {'shape':18s} {'thr':>3s} {'bnc med':>9s} {'min':>8s} "
            f"{'np med':>9s} {'torch med':>9s} {'vs np':>7s} {'vs torch':>8s} {'diff':>8s}")
    print(head)
    print("-" * len(head))
    rng = np.random.default_rng(0)
    status = 0
    for op, shape, *lay in cases:
        layout = lay[0] if lay else "nchw"
        label = "x".join(map(str, shape)) + (" nhwc" if layout == "nhwc" else "")
        x, dy, w, b = setup(op, shape, np.float32, rng, layout)
        for i, thr in enumerate(threads):
            prev = torch.get_num_threads() if torch is not None else None
            if torch is not None:
                torch.set_num_threads(thr)
            try:
                fwd, bwd = make(bnc, torch, op, x, dy, w, b, thr, layout)
                if fwd is None:
                    print(f"{op:22s} {label:18s} not in this bnc")
                    break
                for name, fns in ((op, fwd), (op + "_backward", bwd)):
                    if args.ops and name not in args.ops.split(","):
                        continue
                    if not fns:
                        continue
                    if i > 0 and op != "bn_relu_res":  # (bnc unfused: threaded)
                        fns.pop("numpy", None)   # single-threaded: timed once
                    res = time_calls(fns, repeats, budget)
                    st = {k: v[0] for k, v in res.items()}
                    if any("error" in s for s in st.values()):
                        status = 1
                        print(f"{name:22s} error: {st}")
                        continue
                    ref = res["bnc"][1]
                    # torch's batch_renorm column is batch norm: not the same output
                    diffs = [rel_diff(v[1], ref) for k, v in res.items()
                             if k != "bnc" and not (op == "batch_renorm" and k == "torch")]
                    bm = st["bnc"]["median_ms"]

                    def col(k):
                        return fmt_ms(st[k]["median_ms"]) if k in st else "-"

                    def vs(k):
                        return f"{st[k]['median_ms'] / bm:.2f}x" if k in st else "-"
                    print(f"{name:22s} {label:18s} {thr:3d} "
                          f"{fmt_ms(bm):>9s} {fmt_ms(st['bnc']['min_ms']):>8s} "
                          f"{col('numpy'):>9s} {col('torch'):>9s} {vs('numpy'):>7s} "
                          f"{vs('torch'):>8s} "
                          f"{(max(diffs) if diffs else 0):8.1e}", flush=True)
            finally:
                if torch is not None:
                    torch.set_num_threads(prev)
    return status


if __name__ == "__main__":
    sys.exit(main())
