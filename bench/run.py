#!/usr/bin/env python3
"""Benchmark bnc batch norm against NumPy written the usual way, PyTorch CPU
and ONNX Runtime inference.

One process, one run: for every (op, shape, layout, dtype, threads) it prints
the median and min time of bnc, NumPy, PyTorch (when ``import torch`` works)
and, for inference, ONNX Runtime (when ``import onnxruntime, onnx`` works),
bnc's effective bandwidth under the minimal-traffic model, that
bandwidth as a percent of a copy bandwidth measured in the same run at the
same size, speedup ratios, and the peak extra memory of one call.

Usage (from the repository root)::

    python bench/run.py --quick
    python bench/run.py --threads 1,2 --ops train,backward --json out.json

See bench/README.md for what is measured and how to read the table.
"""

import argparse
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
import time
import tracemalloc

import numpy as np

EPS = 1e-5
MiB = 1 << 20
CACHE_LINE = 64
L2_BYTES_DEFAULT = 1 * MiB   # the per-core L2 the traffic model assumes
MIN_REPEATS = 5              # never fewer timed repeats than this
MIN_SAMPLE_S = 1e-3          # calls faster than this are looped inside a sample

OPS = ("train", "infer", "backward")

# (logical shape, layout, dtype). Image shapes are given as (N, C, H, W);
# the NHWC array is (N, H, W, C) with channel_axis=-1.
IMAGE_SHAPES = [(32, 64, 56, 56), (8, 256, 14, 14), (4, 3, 224, 224),
                (64, 64, 112, 112)]
FULL_SUITE = (
    [(s, lay, "float32") for s in IMAGE_SHAPES for lay in ("NCHW", "NHWC")]
    + [((256, 1024), "NC", "float32"), ((16, 8), "NC", "float32")]
    + [((32, 64, 56, 56), "NCHW", "float64"),
       ((32, 64, 56, 56), "NCHW", "float16")]
)
QUICK_SUITE = [
    ((32, 64, 56, 56), "NCHW", "float32"),
    ((32, 64, 56, 56), "NHWC", "float32"),
    ((8, 256, 14, 14), "NCHW", "float32"),
    ((256, 1024), "NC", "float32"),
]


# --------------------------------------------------------------------------
# environment

def _import_bnc():
    try:
        import bnc
        return bnc
    except ImportError:
        pass
    # Running from a source checkout with an in-place build.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    try:
        import bnc
        return bnc
    except ImportError as e:
        sys.exit(f"error: cannot import bnc ({e}). Install it (pip install .) "
                 "or build it in place and run from the repository root.")


def _import_torch(disabled):
    if disabled:
        return None, "disabled (--no-torch)"
    try:
        import torch
        import torch.nn.functional  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return None, f"not available ({type(e).__name__}: {e}); torch columns skipped"
    return torch, torch.__version__


def _import_ort(disabled):
    """(onnxruntime, onnx, info): the modules, or None and None with a reason."""
    if disabled:
        return None, None, "disabled (--no-ort)"
    try:
        import onnxruntime
        import onnx
        import onnx.helper
        import onnx.numpy_helper  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return None, None, (f"not available ({type(e).__name__}: {e}); "
                            "ort columns skipped")
    if "CPUExecutionProvider" not in onnxruntime.get_available_providers():
        return None, None, "no CPUExecutionProvider; ort columns skipped"
    return onnxruntime, onnx, (f"{onnxruntime.__version__} "
                               f"(onnx {onnx.__version__})")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _caches():
    """'L1d 32K, L2 1024K, L3 32768K' for cpu0, from sysfs (Linux)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    out = []
    try:
        for idx in sorted(os.listdir(base)):
            d = os.path.join(base, idx)
            if not idx.startswith("index"):
                continue
            def rd(name):
                with open(os.path.join(d, name)) as f:
                    return f.read().strip()
            typ = rd("type")
            if typ == "Instruction":
                continue
            lvl = rd("level")
            out.append(f"L{lvl}{'d' if typ == 'Data' else ''} {rd('size')}")
    except OSError:
        return "unknown"
    return ", ".join(out) or "unknown"


def _loadavg():
    """1, 5 and 15 minute load averages (Linux), or None."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return None


def _compiler():
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    try:
        v = subprocess.run([cc, "--version"], capture_output=True, text=True,
                           timeout=10).stdout.splitlines()
        return f"{cc}: {v[0]}" if v else cc
    except Exception:
        return cc


def _header(bnc, torch_info, ort_info, threads, args):
    try:
        omp = bnc.openmp_enabled()
    except Exception as e:
        omp = f"error: {e}"
    try:
        bnc_default_threads = bnc.get_num_threads()
    except Exception as e:
        bnc_default_threads = f"error: {e}"
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "caches": _caches(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "bnc": getattr(bnc, "__version__", "unknown"),
        "bnc_file": getattr(bnc, "__file__", None),
        "bnc_openmp": omp,
        "bnc_default_threads": bnc_default_threads,
        "torch": torch_info,
        "onnxruntime": ort_info,
        "compiler": _compiler(),
        "threads": threads,
        "loadavg_start": _loadavg(),
        "l2_model_bytes": args.l2_kib * 1024,
        "budget_s": args.total_budget,
        "max_repeats": args.total_repeats,
        "passes": args.passes,
        "suite": "quick" if args.quick else "full",
    }
    return info


# --------------------------------------------------------------------------
# timing and memory

def _sample(fn, inner):
    pc = time.perf_counter
    if inner == 1:
        t0 = pc()
        fn()
        return pc() - t0
    fn()    # untimed: the sample starts warm, whatever ran before it
    t0 = pc()
    for _ in range(inner):
        fn()
    return (pc() - t0) / inner


def time_calls(fns, max_repeats, budget):
    """Time several callables against each other, interleaved.

    fns: {name: callable}. Each is warmed up (one call, two if it takes
    under 0.25 s); calls shorter than MIN_SAMPLE_S are looped `inner` times
    per sample, after one untimed call (so that the sample does not start
    in the caches the previous callable left), and the sample divided by
    `inner`. Each gets the number of
    samples that fills about `budget` seconds, clamped to
    [MIN_REPEATS, max_repeats]. The samples are taken round-robin (one of
    each callable per round), so a burst of load from other processes hits
    every library alike instead of the one that happened to be running.
    Results of timed calls are dropped at once.

    Returns {name: (stats, result of the first warm-up call)} or
    {name: ({"error": message}, None)} for a callable that raised.
    """
    max_repeats = max(max_repeats, MIN_REPEATS)
    out, plan, samples = {}, {}, {}
    gc_on = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for name, fn in fns.items():
            try:
                t0 = time.perf_counter()
                first = fn()
                est = time.perf_counter() - t0
                if est < 0.25:
                    est = _sample(fn, 1)
            except Exception as e:
                out[name] = ({"error": f"{type(e).__name__}: {e}"}, None)
                continue
            inner = 1
            if est < MIN_SAMPLE_S:
                inner = int(min(10000, math.ceil(MIN_SAMPLE_S / max(est, 1e-7))))
            reps = int(budget / max(est * inner, 1e-9))
            plan[name] = (inner, max(MIN_REPEATS, min(max_repeats, reps)))
            out[name] = (None, first)
            samples[name] = []
        todo = list(plan)
        while todo:
            for name in list(todo):
                inner, reps = plan[name]
                try:
                    samples[name].append(_sample(fns[name], inner))
                except Exception as e:
                    out[name] = ({"error": f"{type(e).__name__}: {e}"}, None)
                    todo.remove(name)
                    continue
                if len(samples[name]) >= reps:
                    todo.remove(name)
    finally:
        if gc_on:
            gc.enable()
    for name, (inner, reps) in plan.items():
        if out[name][0] is not None:      # failed while timing
            continue
        ms = [t * 1e3 for t in samples[name]]
        out[name] = ({"median_ms": float(np.median(ms)), "min_ms": min(ms),
                      "repeats": len(ms), "inner": inner, "samples_ms": ms},
                     out[name][1])
    return out


def peak_extra_bytes(fn):
    """Peak bytes allocated (as seen by tracemalloc) during one call of fn.

    NumPy reports its array buffers to tracemalloc, so this counts the
    output arrays and every temporary; memory a C kernel gets from malloc
    directly (bnc's O(C + threads x block) scratch) is not seen.
    """
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        r = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del r
    return max(0, peak - before)


_copy_cache = {}
_stream_lib = []  # [ctypes library] once loaded, [None] if it cannot be built


def _stream():
    """bench/stream.c as a shared library (built with `make -C bench libstream`)."""
    if not _stream_lib:
        lib = None
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "build", "libbnc_stream.so")
        try:
            subprocess.run(["make", "-s", "-C", here, "libstream"], check=True,
                           capture_output=True, timeout=120)
            lib = ctypes.CDLL(path)
            lib.bench_copy_seconds.restype = ctypes.c_double
            lib.bench_copy_seconds.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
        except (OSError, subprocess.SubprocessError):
            lib = None
        _stream_lib.append(lib)
    return _stream_lib[0]


def copy_source():
    return ("bench/stream.c (C, OpenMP, thr threads)" if _stream() is not None
            else "np.copyto, SINGLE-THREADED (bench/stream.c could not be built)")


def copy_bandwidth(nbytes, budget, threads=1):
    """STREAM-style copy bandwidth, GB/s = 2 * nbytes / best time.

    bench/stream.c's copy with `threads` OpenMP threads; np.copyto
    (single-threaded) if that library cannot be built here.
    """
    key = (nbytes, threads)
    if key in _copy_cache:
        return _copy_cache[key]
    lib = _stream()
    if lib is not None:
        repeats = int(min(50, max(5, budget / max(nbytes / 10e9, 1e-6))))
        sec = lib.bench_copy_seconds(nbytes, threads, repeats)
        gbs = 2 * nbytes / sec / 1e9 if sec > 0 else float("nan")
    else:
        n = max(1, nbytes // 4)
        src = np.ones(n, dtype=np.float32)
        dst = np.zeros(n, dtype=np.float32)   # touched: no page faults in the timing
        stats, _ = time_calls({"copy": lambda: np.copyto(dst, src)}, 50,
                              budget)["copy"]
        gbs = 2 * n * 4 / (stats["min_ms"] * 1e-3) / 1e9
    _copy_cache[key] = gbs
    return gbs


# --------------------------------------------------------------------------
# the usual NumPy code

# float16: the reductions accumulate in float32 (dtype=acc; NumPy's own
# float16 var overflows at these sizes), the float32 parameters promote the
# arithmetic to float32 and the result is cast back to float16. For float32
# and float64, acc is None and the code is the plain textbook version.

def np_train(x, w, b, axes, bshape, acc=None):
    mean = x.mean(axis=axes, dtype=acc, keepdims=True)
    var = x.var(axis=axes, dtype=acc, keepdims=True)
    y = (x - mean) / np.sqrt(var + EPS) * w.reshape(bshape) + b.reshape(bshape)
    return y if acc is None else y.astype(x.dtype)


def np_infer(x, w, b, rm, rv, bshape, acc=None):
    y = ((x - rm.reshape(bshape)) / np.sqrt(rv.reshape(bshape) + EPS)
         * w.reshape(bshape) + b.reshape(bshape))
    return y if acc is None else y.astype(x.dtype)


def np_infer_out(x, w, b, rm, rv, bshape, out):
    # Preallocated output: fold the affine into scale/shift (O(C)) and
    # write through ufunc out=, no temporaries of the size of x.
    scale = w / np.sqrt(rv + EPS)
    shift = b - rm * scale
    np.multiply(x, scale.reshape(bshape), out=out, casting="same_kind")
    np.add(out, shift.reshape(bshape), out=out, casting="same_kind")
    return out


def np_backward(dy, x, w, mean, invstd, axes, bshape, acc=None):
    # mean and invstd (keepdims shape) come from the forward pass.
    m = x.size // w.size
    xhat = (x - mean) * invstd
    dbias = dy.sum(axis=axes, dtype=acc)
    dweight = (dy * xhat).sum(axis=axes, dtype=acc)
    dx = (w.reshape(bshape) * invstd) * (
        dy - dbias.reshape(bshape) / m - xhat * (dweight.reshape(bshape) / m))
    return (dx if acc is None else dx.astype(x.dtype)), dweight, dbias


def reference(case, op):
    """float64 results of op on the case's inputs (for the checks only)."""
    x = case.x.astype(np.float64)
    axes, bs = case.axes, case.bshape
    w, b = case.w.astype(np.float64), case.b.astype(np.float64)
    if op in ("infer", "infer:out"):
        rm, rv = case.rm.astype(np.float64), case.rv.astype(np.float64)
        return [np_infer(x, w, b, rm, rv, bs)]
    if op == "train":
        return [np_train(x, w, b, axes, bs)]
    mean = x.mean(axis=axes, keepdims=True)
    invstd = 1 / np.sqrt(x.var(axis=axes, keepdims=True) + EPS)
    return list(np_backward(case.dy.astype(np.float64), x, w, mean, invstd,
                            axes, bs))


# --------------------------------------------------------------------------
# one benchmark case: inputs allocated once, shared by every op and library

class Case:
    def __init__(self, shape, layout, dtype, seed=0):
        self.shape = tuple(shape)      # logical: (N, C, H, W) or (N, C)
        self.layout = layout
        self.dtype = np.dtype(dtype)
        if layout == "NHWC":
            n, c, h, w = shape
            self.array_shape = (n, h, w, c)
            self.channel_axis = -1
            self.outer, self.inner = n * h * w, 1
        else:
            self.array_shape = tuple(shape)
            self.channel_axis = 1
            self.outer = shape[0]
            self.inner = int(np.prod(shape[2:], dtype=np.int64))
        self.C = shape[1]
        ax = self.channel_axis % len(self.array_shape)
        self.axes = tuple(i for i in range(len(self.array_shape)) if i != ax)
        bshape = [1] * len(self.array_shape)
        bshape[ax] = self.C
        self.bshape = tuple(bshape)

        rng = np.random.default_rng(seed)
        gen_dt = np.float64 if self.dtype == np.float64 else np.float32
        self.x = (rng.standard_normal(self.array_shape, dtype=gen_dt) * 1.5
                  + 0.5).astype(self.dtype, copy=False)
        self.dy = rng.standard_normal(self.array_shape, dtype=gen_dt).astype(
            self.dtype, copy=False)
        pdt = np.float64 if self.dtype == np.float64 else np.float32
        self.w = rng.uniform(0.5, 1.5, self.C).astype(pdt)
        self.b = (rng.standard_normal(self.C) * 0.1).astype(pdt)
        self.rm = (rng.standard_normal(self.C) * 0.1 + 0.5).astype(pdt)
        self.rv = rng.uniform(1.5, 3.0, self.C).astype(pdt)
        # NumPy's float16 code accumulates in float32 (see np_train).
        self.np_acc = np.float32 if self.dtype == np.float16 else None
        self.nbytes = self.x.nbytes

    @property
    def label_shape(self):
        return "x".join(map(str, self.shape))

    def channel_footprint(self):
        """Bytes of the cache lines that hold one channel of x.

        Channel slabs (inner > 1): outer * inner * itemsize. Interleaved
        channels (inner == 1, NHWC and 2-D): a channel has one value per
        row, so it touches outer lines of min(row bytes, 64 B).
        """
        isz = self.dtype.itemsize
        if self.inner > 1:
            return self.outer * self.inner * isz
        return self.outer * min(self.C * isz, CACHE_LINE)

    def traffic_factor(self, op, l2):
        slab = self.channel_footprint()
        if op == "train":
            return 2 if slab <= l2 else 3
        if op == "backward":
            return 3 if 2 * slab <= l2 else 5
        return 2   # inference


# --------------------------------------------------------------------------
# callables per library

def make_bnc(bnc, case, op, n):
    x, w, b, ax = case.x, case.w, case.b, case.channel_axis
    if op == "train":
        return lambda: bnc.batch_norm_forward(x, w, b, channel_axis=ax,
                                              n_threads=n)[0]
    if op == "infer":
        rm, rv = case.rm, case.rv
        return lambda: bnc.batch_norm(x, w, b, rm, rv, training=False,
                                      channel_axis=ax, n_threads=n)
    if op == "infer:out":
        rm, rv = case.rm, case.rv
        out = np.empty_like(x)
        out.fill(0)
        return lambda: bnc.batch_norm(x, w, b, rm, rv, training=False,
                                      channel_axis=ax, out=out, n_threads=n)
    if op == "backward":
        dy = case.dy
        saved = case.bnc_saved
        if saved is None:
            raise RuntimeError("no saved statistics: bnc's forward failed")
        return lambda: bnc.batch_norm_backward(dy, x, w, saved,
                                               channel_axis=ax, n_threads=n)
    raise ValueError(op)


def make_numpy(case, op):
    x, axes, bshape = case.x, case.axes, case.bshape
    w, b, rm, rv, acc = case.w, case.b, case.rm, case.rv, case.np_acc
    if op == "train":
        return lambda: np_train(x, w, b, axes, bshape, acc)
    if op == "infer":
        return lambda: np_infer(x, w, b, rm, rv, bshape, acc)
    if op == "infer:out":
        out = np.empty_like(x)
        out.fill(0)
        return lambda: np_infer_out(x, w, b, rm, rv, bshape, out)
    if op == "backward":
        dy = case.dy
        mean = x.mean(axis=axes, dtype=acc, keepdims=True)
        invstd = 1 / np.sqrt(x.var(axis=axes, dtype=acc, keepdims=True) + EPS)
        return lambda: np_backward(dy, x, w, mean, invstd, axes, bshape, acc)
    raise ValueError(op)


class TorchCase:
    """Torch views of the case's arrays (no copies).

    NHWC arrays are permuted to the logical NCHW shape, i.e. channels_last
    memory format, which is how PyTorch represents them.
    """

    def __init__(self, torch, case):
        self.torch = torch
        self.nhwc = case.layout == "NHWC"
        self.x = self.view(case.x)
        self.dy = self.view(case.dy)
        self.w, self.b, self.rm, self.rv = (
            torch.from_numpy(a) for a in (case.w, case.b, case.rm, case.rv))

    def view(self, a):
        t = self.torch.from_numpy(a)
        return t.permute(0, 3, 1, 2) if self.nhwc else t

    def to_numpy(self, t):
        t = t.detach()
        if self.nhwc:
            t = t.permute(0, 2, 3, 1)
        return t.numpy()


def make_torch(torch, tc, case, op):
    F = torch.nn.functional
    x, w, b = tc.x, tc.w, tc.b
    if op == "train":
        return lambda: F.batch_norm(x, None, None, w, b, training=True, eps=EPS)
    if op == "infer":
        rm, rv = tc.rm, tc.rv
        return lambda: F.batch_norm(x, rm, rv, w, b, training=False, eps=EPS)
    if op == "infer:out":
        rm, rv = tc.rm, tc.rv
        out = tc.view(np.zeros_like(case.x))   # same memory format as x
        sm = torch.empty(0, dtype=w.dtype)
        si = torch.empty(0, dtype=w.dtype)
        aten_out = torch.ops.aten.native_batch_norm.out

        def f():
            aten_out(x, w, b, rm, rv, False, 0.1, EPS, out=out, save_mean=sm,
                     save_invstd=si)
            return out
        return f
    if op == "backward":
        # Forward outside the timing; time only the aten backward kernel
        # (what autograd calls for y.backward(dy), minus graph overhead).
        _, smean, sinvstd = torch.ops.aten.native_batch_norm(
            x, w, b, None, None, True, 0.1, EPS)
        dy = tc.dy
        bwd = torch.ops.aten.native_batch_norm_backward
        mask = [True, True, True]
        return lambda: bwd(dy, x, w, None, None, smean, sinvstd, True, EPS, mask)
    raise ValueError(op)


ORT_OPSET = 15   # BatchNormalization-15: scale/B and mean/var may be float32
                 # while X is float16, as bnc's and torch's contract has it


class OrtCase:
    """An in-memory ONNX model of the case's inference, and its sessions.

    One BatchNormalization node (opset 15, inference mode, epsilon=EPS)
    with scale/B/mean/var as initializers (the constants of an exported
    model). ONNX BatchNormalization is NCHW-only, so an NHWC array is run
    through Transpose -> BatchNormalization -> Transpose, the graph that
    channels-last data needs in ONNX; input and output keep the array's
    layout. A session per thread count: CPUExecutionProvider,
    intra_op_num_threads=thr, inter_op_num_threads=1, sequential execution,
    ORT's default graph optimizations.
    """

    def __init__(self, ort, onnx, case):
        self.ort, self.onnx = ort, onnx
        helper = onnx.helper
        elem = helper.np_dtype_to_tensor_dtype(case.dtype)
        inits = [onnx.numpy_helper.from_array(a, name) for a, name in
                 ((case.w, "scale"), (case.b, "B"), (case.rm, "mean"),
                  (case.rv, "var"))]
        nhwc = case.layout == "NHWC"
        bn_in, bn_out = ("x_nchw", "y_nchw") if nhwc else ("x", "y")
        nodes = [helper.make_node("BatchNormalization",
                                  [bn_in, "scale", "B", "mean", "var"], [bn_out],
                                  epsilon=EPS, training_mode=0)]
        if nhwc:
            nodes = ([helper.make_node("Transpose", ["x"], [bn_in],
                                       perm=[0, 3, 1, 2])] + nodes
                     + [helper.make_node("Transpose", [bn_out], ["y"],
                                         perm=[0, 2, 3, 1])])
        shape = list(case.array_shape)
        graph = helper.make_graph(
            nodes, "bnc_bench_batchnorm",
            [helper.make_tensor_value_info("x", elem, shape)],
            [helper.make_tensor_value_info("y", elem, shape)], inits)
        opsets = [helper.make_opsetid("", ORT_OPSET)]
        model = helper.make_model(
            graph, opset_imports=opsets, producer_name="bnc bench/run.py",
            # the lowest IR version for the opset, so that onnxruntime
            # releases older than the onnx package load it too
            ir_version=helper.find_min_ir_version_for(opsets))
        onnx.checker.check_model(model)
        self.model = model.SerializeToString()
        self.graph = [n.op_type for n in nodes]
        self.sessions = {}
        self.run_graph = None   # op types of the graph ORT runs (optimized)

    def session(self, n):
        if n not in self.sessions:
            so = self.ort.SessionOptions()
            so.intra_op_num_threads = n
            so.inter_op_num_threads = 1
            so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
            # ORT's pool threads spin after a call by default, taking a core
            # from the next library of the round-robin on a small machine
            # (measured: no faster for ORT, and slower for its NHWC graph).
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.log_severity_level = 3   # the note about saving an optimized model
            with tempfile.TemporaryDirectory() as d:
                # Save the graph after ORT's optimizations, to show what runs
                # (e.g. Cast nodes ORT inserts around a kernel it lacks).
                path = os.path.join(d, "optimized.onnx")
                so.optimized_model_filepath = path
                sess = self.ort.InferenceSession(
                    self.model, so, providers=["CPUExecutionProvider"])
                if self.run_graph is None and os.path.exists(path):
                    self.run_graph = [n.op_type for n in
                                      self.onnx.load(path).graph.node]
            self.sessions[n] = sess
        return self.sessions[n]

    def mark(self):
        """Table marker: T = transposes around the node, C = casts inserted."""
        g = self.run_graph or self.graph
        return ("T" if "Transpose" in g else "") + ("C" if "Cast" in g else "")


def make_ort(ort, oc, case, op, n):
    sess = oc.session(n)
    if op == "infer":
        feed = {"x": case.x}    # zero-copy: a contiguous array on the CPU
        names = ["y"]
        run = sess.run
        return lambda: run(names, feed)[0]
    if op == "infer:out":
        # IOBinding with OrtValues over the NumPy buffers (no copies): ORT
        # writes the result straight into the preallocated out.
        out = np.empty_like(case.x)
        out.fill(np.nan)
        xv = ort.OrtValue.ortvalue_from_numpy(case.x)
        yv = ort.OrtValue.ortvalue_from_numpy(out)
        io = sess.io_binding()
        io.bind_ortvalue_input("x", xv)
        io.bind_ortvalue_output("y", yv)
        run = sess.run_with_iobinding
        run(io)
        if np.isnan(out).any():
            raise RuntimeError("onnxruntime did not write into the bound "
                               "output array")

        def f():
            run(io)
            return out
        f.keep = (xv, yv)   # the bound OrtValues live as long as f
        return f
    raise ValueError(op)


# --------------------------------------------------------------------------
# checks (outside the timings)

# max |result - float64 reference| / max |reference|, per array of a result
TOL = {"float64": 1e-10, "float32": 1e-5, "float16": 2e-3}


def _as_list(r):
    """Result of an op as a list of ndarrays (output, [grad_w, grad_b])."""
    if isinstance(r, np.ndarray):
        return [r]
    return [np.asarray(a) for a in r]


def rel_err(got, ref, chunk=1 << 20):
    """max over the arrays of a result of max|got - ref| / max|ref|.

    ref is float64. Works in chunks to keep the temporaries small.
    """
    if len(got) != len(ref):
        return float("inf")
    worst = 0.0
    for g, r in zip(got, ref):
        if g.shape != r.shape:
            return float("inf")
        g, r = np.ravel(g), np.ravel(r)
        diff = scale = 0.0
        for i in range(0, r.size, chunk):
            rc = r[i:i + chunk]
            d = np.abs(g[i:i + chunk].astype(np.float64) - rc)
            if np.isnan(d).any():
                return float("nan")
            diff = max(diff, float(d.max()))
            scale = max(scale, float(np.abs(rc).max()))
        worst = max(worst, diff / max(scale, 1e-300))
    return worst


def _same_bits(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------
# table

def fmt_ms(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v >= 1000:
        return f"{v:.0f}"
    if v >= 100:
        return f"{v:.1f}"
    if v >= 10:
        return f"{v:.2f}"
    if v >= 1:
        return f"{v:.3f}"
    return f"{v:.4f}"


def fmt_ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def fmt_x(v):
    return "-" if v is None else f"{v:.2f}"


class Table:
    def __init__(self, with_torch, with_ort):
        self.with_torch = with_torch
        self.with_ort = with_ort
        cols = [("op", 9, "<"), ("shape", 15, "<"), ("layout", 6, "<"),
                ("dtype", 7, "<"), ("thr", 3, ">"),
                ("bnc med", 8, ">"), ("min", 8, ">"),
                ("np med", 8, ">"), ("min", 8, ">")]
        if with_torch:
            cols += [("torch med", 9, ">"), ("min", 8, ">")]
        if with_ort:
            cols += [("ort med", 9, ">"), ("min", 8, ">")]
        cols += [("GB/s", 6, ">"), ("model", 5, ">"), ("%copy", 6, ">"),
                 ("vs np", 7, ">")]
        if with_torch:
            cols += [("vs torch", 8, ">")]
        if with_ort:
            cols += [("vs ort", 7, ">")]
        cols += [("mem bnc", 7, ">"), ("mem np", 7, ">")]
        self.cols = cols

    def line(self, values):
        return "  ".join(f"{v:{a}{w}}" for v, (_, w, a) in zip(values, self.cols))

    def head(self):
        h = self.line([c[0] for c in self.cols])
        return h + "\n" + "-" * len(h)

    def row(self, r):
        def lib(name, mark=""):
            s = r[name]
            if s is None:
                return ["-", "-"]
            if "error" in s:
                return ["ERR", "-"]
            return [fmt_ms(s["median_ms"]) + mark, fmt_ms(s["min_ms"])]
        vals = [r["op"], r["shape"], r["layout"], r["dtype"], str(r["threads"])]
        vals += lib("bnc") + lib("numpy")
        if self.with_torch:
            vals += lib("torch")
        if self.with_ort:
            vals += lib("ort", r.get("ort_mark") or "")
        vals += ["-" if r["bnc_GBs"] is None else f"{r['bnc_GBs']:.1f}",
                 f"{r['traffic_factor']}x",
                 "-" if r["pct_copy"] is None else f"{r['pct_copy']:.0f}%",
                 fmt_ratio(r["speedup_vs_numpy"])]
        if self.with_torch:
            vals += [fmt_ratio(r["speedup_vs_torch"])]
        if self.with_ort:
            vals += [fmt_ratio(r["speedup_vs_ort"])]
        vals += [fmt_x(r["mem_bnc_x"]), fmt_x(r["mem_numpy_x"])]
        return self.line(vals)


def print_header(info, args, with_torch, with_ort):
    p = print
    p("bnc batch-norm benchmark")
    p(f"  date      {info['date']}")
    p(f"  machine   {info['machine']}, {info['cores']} cores "
      f"({info['usable_cores']} usable); caches (cpu0): {info['caches']}")
    p(f"  platform  {info['platform']}; load average {info['loadavg_start']} "
      f"(anything near or above the core count makes thr>1 rows noisy)")
    p(f"  python    {info['python']}   numpy {info['numpy']}   "
      f"torch {info['torch']}")
    p(f"  ort       onnxruntime {info['onnxruntime']}")
    p(f"  bnc       {info['bnc']}  openmp_enabled={info['bnc_openmp']}  "
      f"default threads={info['bnc_default_threads']}  ({info['bnc_file']})")
    p(f"  compiler  {info['compiler']} (Python's CC)")
    if args.passes > 1:
        p(f"  suite     {info['suite']}, threads {info['threads']}, {args.passes} passes "
          f"over the suite, a row's samples merged from all (a burst of load hits one "
          f"pass of it); per pass: budget {args.budget:.3g} s per measurement, "
          f"{MIN_REPEATS}..{args.repeats} timed repeats after warm-up")
    else:
        p(f"  suite     {info['suite']}, threads {info['threads']}, "
          f"budget {args.budget:g} s per measurement, "
          f"{MIN_REPEATS}..{args.repeats} timed repeats after warm-up")
    p("Columns: times in ms (median and min over repeats; sub-ms calls are "
      "looped and averaged per sample, after one untimed call).")
    p("  bnc: n_threads=thr.  np: the usual NumPy code, single-threaded, "
      "measured once per case (same value on each thr row).")
    if with_torch:
        p("  torch: torch.set_num_threads(thr); F.batch_norm for train/infer, "
          "aten native_batch_norm.out for infer:out,")
        p("         aten native_batch_norm_backward for backward (forward "
          "outside the timing). NHWC = channels_last.")
    if with_ort:
        p("  ort: inference only; one BatchNormalization node (opset "
          f"{ORT_OPSET}, constants as initializers), CPUExecutionProvider,")
        p("       intra_op_num_threads=thr, inter_op_num_threads=1, sequential; "
          "session.run for infer, IOBinding into out for infer:out.")
        p("       Marks after the ort median: T = Transpose->BN->Transpose "
          "(NHWC: ONNX BatchNormalization is NCHW-only);")
        p("       C = ORT inserted Cast nodes around the node (no kernel for "
          "that dtype on CPU: float16 computed as float32).")
    p(f"  GB/s: bnc bytes under the minimal-traffic model (model = bytes moved "
      f"/ x.nbytes; L2 = {info['l2_model_bytes'] // 1024} KiB) / bnc min time.")
    p("  %copy: GB/s as a percent of a copy bandwidth at x.nbytes and thr threads "
      f"({copy_source()}; 2*nbytes/min time).")
    p(f"  vs np{', vs torch' if with_torch else ''}{', vs ort' if with_ort else ''}: "
      "their median / bnc median (>1: bnc faster).")
    p("  mem: peak extra memory of one call (tracemalloc) in units of x.nbytes, "
      "outputs included; bnc's C scratch is not seen.")
    p()


# --------------------------------------------------------------------------
# main loop

def run_case(case, ops, threads, bnc, torch, ort, args, table, records,
             problems, first_pass=True):
    """Time one case's rows and append them to records (printing each to
    table, unless table is None). first_pass=False (the later passes of
    --passes): timings only, no float64 checks and no memory measurement."""
    tc = TorchCase(torch, case) if torch is not None else None
    l2 = args.l2_kib * 1024
    caselabel = f"{case.label_shape} {case.layout} {case.dtype.name}"

    def guarded(fn, what):
        try:
            return fn()
        except Exception as e:
            problems.append(f"{caselabel} {what}: {type(e).__name__}: {e}")
            return None

    # bnc's forward statistics for the backward; outside every timing.
    if "backward" in ops:
        case.bnc_saved = guarded(
            lambda: bnc.batch_norm_forward(case.x, case.w, case.b,
                                           channel_axis=case.channel_axis)[1],
            "batch_norm_forward (for backward)")

    expanded = []
    for op in ops:
        expanded += ["infer", "infer:out"] if op == "infer" else [op]

    # ONNX Runtime: inference only; the model is built once per case.
    oc = None
    if ort is not None and "infer" in ops:
        oc = guarded(lambda: OrtCase(ort[0], ort[1], case), "onnx model")

    for op in expanded:
        factor = case.traffic_factor(op, l2)
        tol = TOL[case.dtype.name]
        ref = (None if args.no_check or not first_pass else
               guarded(lambda: reference(case, op), f"{op} float64 reference"))

        def check(who, result, row):
            """Record (and, for bnc, report beyond tol) a result's error."""
            if ref is None:
                return
            e = rel_err(_as_list(result), ref)
            row[who + "_rel_err"] = e
            if not e <= tol and who == "bnc":
                problems.append(f"{caselabel} {op} threads={row['threads']}: "
                                f"bnc max rel err {e:.3g} vs the float64 "
                                f"reference (tol {tol:g})")

        np_stats, np_err, mem_np, mem_bnc, bnc_first = None, None, None, None, None
        for i, n in enumerate(threads):
            row = {"op": op, "shape": case.label_shape, "layout": case.layout,
                   "dtype": case.dtype.name, "threads": n,
                   "array_shape": list(case.array_shape),
                   "channel_axis": case.channel_axis,
                   "nbytes": case.nbytes, "traffic_factor": factor,
                   "model_bytes": factor * case.nbytes,
                   "channel_footprint_bytes": case.channel_footprint()}
            copy_gbs = copy_bandwidth(case.nbytes, min(args.total_budget, 0.5), n)
            row["copy_GBs"] = copy_gbs
            # The callables timed together (interleaved) on this row. NumPy
            # is single-threaded: timed once, with the first thread count.
            fns = {}
            if i == 0 and not args.no_numpy:
                f = guarded(lambda: make_numpy(case, op), f"{op} numpy setup")
                if f is not None:
                    fns["numpy"] = f
            f = guarded(lambda: make_bnc(bnc, case, op, n), f"{op} bnc setup")
            if f is not None:
                fns["bnc"] = f
            if tc is not None:
                f = guarded(lambda: make_torch(torch, tc, case, op),
                            f"{op} torch setup")
                if f is not None:
                    fns["torch"] = f
            if oc is not None and op in ("infer", "infer:out"):
                f = guarded(lambda: make_ort(ort[0], oc, case, op, n),
                            f"{op} ort setup")
                if f is not None:
                    fns["ort"] = f
            if tc is not None:
                prev = torch.get_num_threads()
                torch.set_num_threads(n)
            try:
                res = time_calls(fns, args.repeats, args.budget)
            finally:
                if tc is not None:
                    torch.set_num_threads(prev)
            for name, (stats, _) in res.items():
                if "error" in stats:
                    problems.append(f"{caselabel} {op} {name} threads={n}: "
                                    f"{stats['error']}")

            if i == 0 and "numpy" in res:
                np_stats, first = res.pop("numpy")
                if first is not None:
                    tmp = {"threads": n}
                    check("numpy", first, tmp)
                    np_err = tmp.get("numpy_rel_err")
                    if first_pass:
                        mem_np = guarded(lambda: peak_extra_bytes(fns["numpy"]),
                                         f"{op} numpy memory")
                del first
            row["numpy"], row["numpy_rel_err"] = np_stats, np_err

            row["bnc"], out = res.pop("bnc", (None, None))
            if out is not None:
                out = _as_list(out)
                if bnc_first is None:
                    check("bnc", out, row)
                    # copies: infer:out returns its reused out= array
                    bnc_first = (n, [a.copy() for a in out])
                    if first_pass:
                        mem_bnc = guarded(lambda: peak_extra_bytes(fns["bnc"]),
                                          f"{op} bnc memory")
                else:
                    same = _same_bits(out, bnc_first[1])
                    row["bnc_bitwise_same_as_threads_" + str(bnc_first[0])] = same
                    if not same:
                        check("bnc", out, row)
                        problems.append(
                            f"{caselabel} {op}: bnc threads={n} is not "
                            f"bit-identical to threads={bnc_first[0]}")
            del out

            row["torch"], tout = res.pop("torch", (None, None))
            if tout is not None and i == 0:
                if isinstance(tout, tuple):
                    tout = [tc.to_numpy(tout[0])] + [t.numpy() for t in tout[1:]]
                else:
                    tout = [tc.to_numpy(tout)]
                check("torch", tout, row)

            row["ort"], oout = res.pop("ort", (None, None))
            if row["ort"] is not None:
                row["ort_graph"] = oc.run_graph or oc.graph
                row["ort_mark"] = oc.mark()
            if oout is not None and i == 0:
                check("ort", [oout], row)
            del tout, oout, fns, res

            row["mem_bnc_bytes"] = mem_bnc
            row["mem_numpy_bytes"] = mem_np
            row["mem_bnc_x"] = None if mem_bnc is None else mem_bnc / case.nbytes
            row["mem_numpy_x"] = None if mem_np is None else mem_np / case.nbytes
            derive(row)
            records.append(row)
            if table is not None:
                print(table.row(row), flush=True)
        del ref, bnc_first
        gc.collect()
    del oc
    if table is not None:
        print(flush=True)


LIBS = ("numpy", "bnc", "torch", "ort")


def derive(row):
    """The numbers computed from a row's timings: bnc's GB/s under the
    traffic model, its percent of the copy bandwidth, the speed-ups."""
    b = row["bnc"]
    ok = b is not None and "error" not in b
    row["bnc_GBs"] = (row["model_bytes"] / (b["min_ms"] * 1e-3) / 1e9
                      if ok else None)
    row["pct_copy"] = (100 * row["bnc_GBs"] / row["copy_GBs"] if ok else None)
    for other in ("numpy", "torch", "ort"):
        o = row[other]
        row["speedup_vs_" + other] = (
            None if not ok or o is None or "error" in o
            else o["median_ms"] / b["median_ms"])


def _row_key(r):
    return (r["op"], r["shape"], r["layout"], r["dtype"], r["threads"])


def merge_passes(passes):
    """One list of rows from the rows of every pass (--passes): each
    library's samples of a row from all passes together, their median and
    min, and the derived numbers again; the rest (checks, memory) from the
    first pass. A row or a library that failed in a pass keeps the samples
    of the passes where it ran."""
    later = [{_row_key(r): r for r in rows} for rows in passes[1:]]
    merged = []
    for row in passes[0]:
        row = dict(row)
        for lib in LIBS:
            st = row.get(lib)
            if st is None or "error" in st:
                continue
            ms, n = list(st["samples_ms"]), 1
            for rows in later:
                o = rows.get(_row_key(row), {}).get(lib)
                if o is not None and "error" not in o:
                    ms += o["samples_ms"]
                    n += 1
            row[lib] = dict(st, median_ms=float(np.median(ms)), min_ms=min(ms),
                            repeats=len(ms), samples_ms=ms, passes=n)
        derive(row)
        merged.append(row)
    return merged


# --------------------------------------------------------------------------
# the performance goals, checked against this run's rows

def _label(r):
    return f"{r['op']} {r['shape']} {r['layout']} {r['dtype']} thr={r['threads']}"


def _worst(rows, value, at_least):
    """(worst row, its value) over rows with a value; (None, None) if none."""
    vals = [(r, value(r)) for r in rows]
    vals = [(r, v) for r, v in vals if v is not None]
    if not vals:
        return None, None
    return (min if at_least else max)(vals, key=lambda rv: rv[1])


def goals(records):
    """Each goal of the performance issue: (text, met or None, worst row text).
    met is None when this run has no row the goal applies to (e.g. --quick,
    or a peer not installed)."""
    f32 = [r for r in records if r["dtype"] == "float32"]
    speed = lambda who: lambda r: r.get("speedup_vs_" + who)   # noqa: E731
    out = []

    def goal(text, rows, value, bound, at_least=True, fmt="{:.2f}x"):
        r, v = _worst(rows, value, at_least)
        if r is None:
            out.append((text, None, "no row in this run"))
            return
        met = v >= bound if at_least else v <= bound
        out.append((text, met, f"worst {fmt.format(v)} at {_label(r)}"))

    main = lambda r: r["shape"] == "32x64x56x56" and r["layout"] == "NCHW"  # noqa: E731
    goal("train >= 2.5x torch on 32x64x56x56 NCHW",
         [r for r in f32 if r["op"] == "train" and main(r)], speed("torch"), 2.5)
    goal("train >= 80% of the 2x|x| roofline where a slab fits L2",
         [r for r in f32 if r["op"] == "train" and r["traffic_factor"] == 2],
         lambda r: r["pct_copy"], 80, fmt="{:.0f}%")
    goal("train >= 1.5x torch on every other shape",
         [r for r in f32 if r["op"] == "train" and not main(r)], speed("torch"), 1.5)
    goal("backward >= 1.5x torch on NCHW with >= 64 channels",
         [r for r in f32 if r["op"] == "backward" and r["layout"] == "NCHW"
          and r["array_shape"][1] >= 64], speed("torch"), 1.5)
    goal("backward >= 80% of the 3x|x| roofline where slabs fit L2",
         [r for r in f32 if r["op"] == "backward" and r["traffic_factor"] == 3],
         lambda r: r["pct_copy"], 80, fmt="{:.0f}%")
    infer = [r for r in records if r["op"] in ("infer", "infer:out")]
    goal("inference >= torch everywhere", infer, speed("torch"), 1.0)
    goal("inference >= ONNX Runtime everywhere", infer, speed("ort"), 1.0)
    goal("inference with out= >= 1.3x torch on 64x64x112x112",
         [r for r in f32 if r["op"] == "infer:out" and r["shape"] == "64x64x112x112"],
         speed("torch"), 1.3)
    goal("4x3x224x224 NHWC train and backward >= 10x torch",
         [r for r in f32 if r["op"] in ("train", "backward")
          and r["shape"] == "4x3x224x224" and r["layout"] == "NHWC"], speed("torch"), 10)
    one = {(r["op"], r["shape"], r["layout"], r["dtype"]): r
           for r in records if r["threads"] == 1}

    def scaling(r):
        base = one.get((r["op"], r["shape"], r["layout"], r["dtype"]))
        if base is None or r["threads"] != 2 or not (r.get("bnc") and base.get("bnc")):
            return None
        # only where the 2-thread bandwidth allows it: the copy bandwidth
        # itself scales by 1.7x, and 1.7x bnc's 1-thread rate (model bytes
        # per median time) is within the 2-thread copy bandwidth (a 1-thread
        # call that streams past the caches can already beat a copy)
        if not (r["copy_GBs"] and base["copy_GBs"] and
                r["copy_GBs"] >= 1.7 * base["copy_GBs"]):
            return None
        rate1 = base["model_bytes"] / (base["bnc"]["median_ms"] * 1e-3) / 1e9
        if 1.7 * rate1 > r["copy_GBs"]:
            return None
        return base["bnc"]["median_ms"] / r["bnc"]["median_ms"]
    goal("2 threads >= 1.7x 1 thread where the 2-thread copy bandwidth allows it",
         [r for r in records if r["shape"] != "16x8"], scaling, 1.7)
    goal(">= 10x the usual NumPy code except on (16,8)",
         [r for r in records if r["shape"] != "16x8"], speed("numpy"), 10)
    goal("(16,8) call <= 3 us",
         [r for r in records if r["shape"] == "16x8"],
         lambda r: r["bnc"]["median_ms"] * 1e3 if r.get("bnc") and "median_ms" in r["bnc"]
         else None, 3, at_least=False, fmt="{:.1f} us")
    goal("peak extra memory <= the output + O(C)",
         [r for r in records if r["shape"] != "16x8"],
         lambda r: r["mem_bnc_x"], 1.05, at_least=False, fmt="{:.2f}x|x|")
    f32_at = {(r["op"], r["shape"], r["layout"], r["threads"]): r for r in f32}

    def per_element(r):
        base = f32_at.get((r["op"], r["shape"], r["layout"], r["threads"]))
        if base is None or not (r.get("bnc") and base.get("bnc")):
            return None
        return base["bnc"]["median_ms"] / r["bnc"]["median_ms"]
    goal("float16 at least as fast per element as float32",
         [r for r in records if r["dtype"] == "float16"], per_element, 1.0)
    return out


def print_goals(records, problems):
    print("\ngoals (the performance issue's, on this run's medians):")
    rows = goals(records)
    bits = not any("bit-identical" in m for m in problems)
    rows.append(("bit-identical across thread counts", bits,
                 "every row" if bits else "see problems above"))
    for text, met, detail in rows:
        mark = "n/a " if met is None else ("met " if met else "MISS")
        print(f"  {mark} {text}: {detail}")
    n_met = sum(1 for _, m, _ in rows if m)
    n_app = sum(1 for _, m, _ in rows if m is not None)
    print(f"  {n_met} of {n_app} applicable goals met")


def plot(records, path, with_torch, with_ort):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        print(f"--plot: matplotlib is not importable ({type(e).__name__}: {e}); "
              f"no chart written. pip install matplotlib to get one.",
              file=sys.stderr)
        return
    rows = [r for r in records if r["speedup_vs_numpy"] or r["speedup_vs_torch"]
            or r["speedup_vs_ort"]]
    if not rows:
        print("--plot: nothing to plot", file=sys.stderr)
        return
    # One panel per thread count, one bar group per (op, shape, layout, dtype).
    threads = sorted({r["threads"] for r in rows})
    keys = []
    for r in rows:
        k = (r["op"], r["shape"], r["layout"], r["dtype"])
        if k not in keys:
            keys.append(k)
    series = [("bnc vs numpy", "speedup_vs_numpy", "tab:blue")]
    if with_torch:
        series.append(("bnc vs torch", "speedup_vs_torch", "tab:orange"))
    if with_ort:
        series.append(("bnc vs ort", "speedup_vs_ort", "tab:green"))
    h = 0.8 / len(series)
    fig, axes = plt.subplots(
        1, len(threads), sharey=True, squeeze=False,
        figsize=(4 + 4 * len(threads), 1.5 + 0.17 * len(keys) * len(series)))
    ys = np.arange(len(keys))
    for ax, n in zip(axes[0], threads):
        by_key = {(r["op"], r["shape"], r["layout"], r["dtype"]): r
                  for r in rows if r["threads"] == n}
        for k, (name, key, color) in enumerate(series):
            vals = np.array([by_key[c][key] if c in by_key and by_key[c][key]
                             else np.nan for c in keys])
            # Bars grow from 1 (parity): right = bnc faster, left = slower.
            ax.barh(ys + (k - (len(series) - 1) / 2) * h, vals - 1.0, left=1.0,
                    height=h, label=name, color=color)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{n} thread{'s' if n > 1 else ''}")
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.set_xlabel("other median / bnc median (>1: bnc faster)")
    ax0 = axes[0][0]
    ax0.set_yticks(ys)
    ax0.set_yticklabels([" ".join(k) for k in keys], fontsize=7)
    ax0.invert_yaxis()
    axes[0][-1].legend(loc="lower right")
    fig.suptitle("bnc batch norm speedups")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart written to {path}", file=sys.stderr)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="bnc batch norm vs NumPy (the usual code) vs PyTorch CPU "
                    "vs ONNX Runtime (inference).")
    p.add_argument("--quick", action="store_true",
                   help="4 float32 cases and a smaller time budget (<1 min)")
    p.add_argument("--ops", default=",".join(OPS),
                   help="comma list of train,infer,backward (default: all; "
                        "infer also times out= into a preallocated array)")
    p.add_argument("--threads", default=None,
                   help="comma list of thread counts (default: 1 and all cores)")
    p.add_argument("--repeats", type=int, default=None,
                   help="maximum timed repeats per measurement (default 30, "
                        f"--quick 10); never fewer than {MIN_REPEATS}")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds per measurement that set the repeat count "
                        "(default 0.4, --quick 0.1)")
    p.add_argument("--passes", type=int, default=None,
                   help="times the suite is run, each row's samples merged "
                        "across the passes (default 3, --quick 1): a phase of "
                        "load from other processes then hits one pass of a "
                        "row, not all its samples; budget and repeats are "
                        "split between the passes")
    p.add_argument("--json", metavar="PATH", help="write raw results as JSON")
    p.add_argument("--plot", metavar="PATH",
                   help="write a PNG bar chart of the speedups (needs matplotlib)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime")
    p.add_argument("--no-goals", action="store_true",
                   help="leave out the summary of the performance goals")
    p.add_argument("--no-numpy", action="store_true",
                   help="skip the NumPy baseline")
    p.add_argument("--no-check", action="store_true",
                   help="skip the float64 correctness checks (faster)")
    p.add_argument("--l2-kib", type=int, default=L2_BYTES_DEFAULT // 1024,
                   help="L2 size assumed by the traffic model (default 1024)")
    args = p.parse_args(argv)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        p.error(f"--ops: unknown {bad}; choose from {','.join(OPS)}")
    args.ops = [o for o in OPS if o in ops]
    if args.threads is None:
        args.threads = sorted({1, _usable_cores()})
    else:
        try:
            args.threads = [int(t) for t in args.threads.split(",") if t.strip()]
        except ValueError:
            p.error("--threads: expected a comma list of integers, e.g. 1,2")
        if not args.threads or any(t < 1 for t in args.threads):
            p.error("--threads: thread counts must be >= 1")
    if args.repeats is None:
        args.repeats = 10 if args.quick else 30
    if args.repeats < MIN_REPEATS:
        print(f"--repeats {args.repeats} raised to {MIN_REPEATS}", file=sys.stderr)
        args.repeats = MIN_REPEATS
    if args.budget is None:
        args.budget = 0.1 if args.quick else 0.4
    if args.passes is None:
        args.passes = 1 if args.quick else 3
    if args.passes < 1:
        p.error("--passes: must be >= 1")
    # the budget and the repeats of a measurement, per pass
    args.total_budget, args.total_repeats = args.budget, args.repeats
    args.budget /= args.passes
    args.repeats = max(MIN_REPEATS, -(-args.repeats // args.passes))
    return args


def main(argv=None):
    args = parse_args(argv)
    bnc = _import_bnc()
    torch, torch_info = _import_torch(args.no_torch)
    ort_mod, onnx_mod, ort_info = _import_ort(args.no_ort)
    ort = None if ort_mod is None else (ort_mod, onnx_mod)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except Exception:
            print("--plot: matplotlib is not importable; the benchmark runs but "
                  "writes no chart (pip install matplotlib).", file=sys.stderr)
            args.plot = None

    info = _header(bnc, torch_info, ort_info, args.threads, args)
    with_torch = torch is not None
    with_ort = ort is not None
    print_header(info, args, with_torch, with_ort)
    table = Table(with_torch, with_ort)
    print(table.head(), flush=True)

    suite = QUICK_SUITE if args.quick else FULL_SUITE
    passes, problems = [], []
    t_start = time.perf_counter()
    for k in range(args.passes):
        # One pass prints its rows as they come; with several, the table is
        # printed once the passes are merged.
        live = table if args.passes == 1 else None
        if args.passes > 1:
            print(f"pass {k + 1}/{args.passes} ({time.perf_counter() - t_start:.0f} s)",
                  file=sys.stderr, flush=True)
        records = []
        for shape, layout, dtype in suite:
            case = Case(shape, layout, dtype)
            run_case(case, args.ops, args.threads, bnc, torch, ort, args, live,
                     records, problems, first_pass=k == 0)
            del case
            gc.collect()
        passes.append(records)
    records = merge_passes(passes) if args.passes > 1 else passes[0]
    problems = list(dict.fromkeys(problems))   # once, whichever passes hit it
    if args.passes > 1:
        last = None
        for r in records:
            if last is not None and r["shape"] + r["layout"] + r["dtype"] != last:
                print()
            last = r["shape"] + r["layout"] + r["dtype"]
            print(table.row(r))
        print(flush=True)
    elapsed = time.perf_counter() - t_start

    info["loadavg_end"] = _loadavg()
    print(f"total {elapsed:.0f} s; load average at the end {info['loadavg_end']}")
    if problems:
        print(f"\n{len(problems)} problem(s):")
        for msg in problems:
            print("  " + msg)
    elif not args.no_check:
        print("checks: bnc matches a float64 reference (max abs error / max "
              "abs value <= " +
              ", ".join(f"{v:g} for {k}" for k, v in TOL.items()) +
              ") and is bit-identical across thread counts, on every row.")
    for who in ("numpy", "torch", "ort"):
        key = who + "_rel_err"
        bad = sorted({f"{r['op']} {r['shape']} {r['layout']} {r['dtype']} "
                      f"{r[key]:.2g}" for r in records
                      if r.get(key) is not None and not r[key] <= TOL[r["dtype"]]})
        if bad:
            print(f"note: {who} is less accurate than that tolerance on: "
                  + "; ".join(bad))

    if not args.no_goals:
        print_goals(records, problems)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "ops": args.ops, "elapsed_s": elapsed,
                       "problems": problems, "results": records}, f, indent=1)
        print(f"raw results written to {args.json}", file=sys.stderr)
    if args.plot:
        plot(records, args.plot, with_torch, with_ort)
    return 1 if any("Error" in m for m in problems) else 0


if __name__ == "__main__":
    sys.exit(main())
