"""Embedding bnc: the shipped header and static C core (a C program built and
run without Python), a Cython extension cimporting the kernels from the
shipped bnc/cbnc.pxd, and the NumPy network example trained end to end.
The autograd recipes (torch.autograd.Function, jax.custom_vjp) are in
docs/guide/embedding.md and run by tests/test_docs.py."""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import bnc
import bnc.reference as ref

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _compiler():
    cc = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "").split(" ")[0]
    for name in (cc, "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.skip("no C compiler found (CC, cc, gcc, clang)")


def _example(*parts):
    path = EXAMPLES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (the tests run from a source checkout)")
    return path


def test_get_include_ships_the_header():
    inc = Path(bnc.get_include())
    assert (inc / "bnc" / "bnc.h").is_file()
    source = ROOT / "csrc" / "include" / "bnc" / "bnc.h"
    if source.is_file():
        assert (inc / "bnc" / "bnc.h").read_bytes() == source.read_bytes()
    text = (inc / "bnc" / "bnc.h").read_text()
    assert f'#define BNC_VERSION_STRING "{bnc.__version__}"' in text


def test_extension_kwargs():
    kw = bnc.extension_kwargs()
    assert kw["include_dirs"] == [bnc.get_include()]
    assert kw["library_dirs"] == [bnc.get_library_dir()]
    assert "bnc" in kw["libraries"]
    assert any(Path(bnc.get_library_dir()).glob("*bnc.*"))
    assert ("-fopenmp" in kw["extra_link_args"]) == bnc.openmp_enabled()


@pytest.mark.parametrize("shape, threads", [((4, 3, 10), 1), ((5, 8, 37), 2), ((64, 2, 1), 2)])
def test_c_program(tmp_path, shape, threads):
    """examples/c/bn_file.c, compiled against the installed header and libbnc.a,
    reads x and dy from a file, runs the training forward and backward, and
    writes the results: compared with the float64 NumPy reference."""
    src = _example("c", "bn_file.c")
    kw = bnc.extension_kwargs()
    exe = tmp_path / "bn_file"
    cmd = [_compiler(), "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", str(src),
           *[f"-I{d}" for d in kw["include_dirs"]], *[f"-L{d}" for d in kw["library_dirs"]],
           *[f"-l{lib}" for lib in kw["libraries"]], *kw["extra_link_args"], "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    np.concatenate([x.ravel(), dy.ravel()]).tofile(tmp_path / "in.bin")
    N, C, HW = shape
    run = subprocess.run([str(exe), str(N), str(C), str(HW), "1e-3", str(tmp_path / "in.bin"),
                          str(tmp_path / "out.bin"), str(threads)],
                         capture_output=True, text=True, check=True)
    assert f"bnc {bnc.__version__}" in run.stdout
    out = np.fromfile(tmp_path / "out.bin", dtype=np.float32)
    n = x.size
    y, dx = out[:n].reshape(shape), out[n:2 * n].reshape(shape)
    mean, invstd, dw, db = out[2 * n:].reshape(4, C)
    y_ref, s = ref.batch_norm_forward(x, eps=1e-3)
    g = ref.batch_norm_backward(dy, x, None, s)
    for got, want in [(y, y_ref), (dx, g.grad_input), (mean, s.mean), (invstd, s.invstd),
                      (dw, g.grad_weight), (db, g.grad_bias)]:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_cython_extension(tmp_path):
    """examples/cython: a Cython extension cimporting the kernels from
    bnc.cbnc and linking the static core, built with setuptools in a temp
    directory and called on NumPy arrays, gives bnc's own results."""
    pytest.importorskip("Cython", reason="Cython is needed to build the extension")
    pytest.importorskip("setuptools", reason="setuptools is needed to build the extension")
    _compiler()
    work = tmp_path / "demo"
    shutil.copytree(_example("cython"), work)
    env = dict(os.environ)
    # bnc as this process imports it (installed, or a source tree on sys.path)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(bnc.__file__).parents[1])] +
                                        env.get("PYTHONPATH", "").split(os.pathsep))
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=work,
                           env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    so = next(work.glob("bnc_demo*" + sysconfig.get_config_var("EXT_SUFFIX")))
    spec = importlib.util.spec_from_file_location("bnc_demo", so)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    rng = np.random.default_rng(7)
    for shape in [(4, 3, 10), (16, 5, 1), (2, 64, 300)]:
        x = rng.standard_normal(shape) * 2 - 1
        y, mean, invstd = demo.standardize(x, 1e-4, 2)
        y_bnc, s = bnc.batch_norm_forward(x, eps=1e-4)
        assert np.array_equal(y, y_bnc)
        assert np.array_equal(mean, s.mean) and np.array_equal(invstd, s.invstd)
        np.testing.assert_allclose(y, ref.batch_norm_forward(x, eps=1e-4)[0], rtol=1e-12,
                                   atol=1e-12)
    with pytest.raises(ValueError, match="eps"):
        demo.standardize(np.ones((2, 2, 2)), -1.0)


def _convnet():
    path = _example("numpy_convnet.py")
    spec = importlib.util.spec_from_file_location("numpy_convnet", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_numpy_convnet_trains():
    """The example network's loss falls epoch after epoch and it classifies
    held-out images in inference mode (running statistics)."""
    losses, acc = _convnet().train(epochs=4, n_train=1024, n_test=256)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.5 * losses[0]
    assert acc > 0.8


def test_numpy_convnet_gradients():
    """The hand-written backward (conv, bnc batch norm, ReLU, linear) against
    central finite differences of the loss, in float64."""
    mod = _convnet()
    rng = np.random.default_rng(3)
    x, labels = mod.make_data(6, rng)
    net = mod.Net(channels=3, seed=1)
    _, grads = net.loss_and_grads(x, labels)
    dx = net.dx

    def loss_at():
        return net.loss_and_grads(x, labels)[0]

    h = 1e-6
    for name, arr, grad in [(k, net.p[k], grads[k]) for k in net.p] + [("x", x, dx)]:
        for idx in list(zip(*[rng.integers(0, s, 4) for s in arr.shape])):
            old = arr[idx]
            arr[idx] = old + h
            up = loss_at()
            arr[idx] = old - h
            down = loss_at()
            arr[idx] = old
            np.testing.assert_allclose(grad[idx], (up - down) / (2 * h), rtol=1e-4, atol=1e-7,
                                       err_msg=f"{name}{idx}")
