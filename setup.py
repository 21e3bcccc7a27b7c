"""Build of bnc: one extension, bnc._core, from bnc/_core.pyx and csrc/*.c.

OpenMP is probed with the compiler that builds the extension: if a tiny
OpenMP program compiles and links, the kernels are built with -fopenmp;
otherwise (or with BNC_DISABLE_OPENMP=1) they are built serially and a
warning says so.

Besides the extension, the build ships the C core for embedding (see
docs/guide/embedding.md): the public header as bnc/include/bnc/bnc.h
(bnc.get_include()), the kernels' object files, compiled once for the
extension, as the static library bnc/lib/libbnc.a (bnc.get_library_dir()), and
bnc/lib/build.json with the flags a program linking it needs (OpenMP,
sanitizers), which bnc.extension_kwargs() reads.

BNC_SANITIZE=1 builds the extension with AddressSanitizer and
UndefinedBehaviorSanitizer (gcc or clang), for the sanitizer CI job: Python
must then run with the ASan runtime preloaded (see .ci/sanitize).
"""
import json
import os
import shutil
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
C_SOURCES = sorted(str(p.relative_to(HERE)) for p in (HERE / "csrc").glob("*.c"))
C_HEADERS = sorted(str(p.relative_to(HERE)) for p in (HERE / "csrc").rglob("*.h"))
BASE_FLAGS = ["-std=c11", "-O3", "-ffp-contract=off", "-Wall", "-Wextra", "-Wno-unused-function"]
OPENMP_FLAGS = {"unix": ["-fopenmp"], "msvc": ["/openmp"]}
# UB aborts at its first report instead of printing and going on
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                  "-fno-omit-frame-pointer", "-O1", "-g"]

_PROBE = textwrap.dedent("""
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 && omp_get_max_threads() > 0 ? 0 : 1;
    }
""")


def openmp_works(compiler, flags):
    """True if `compiler` compiles and links an OpenMP program with `flags`."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(_PROBE)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=flags)
        except Exception:  # any compile or link failure means "no OpenMP"
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        ctype = self.compiler.compiler_type
        flags = list(BASE_FLAGS) if ctype == "unix" else []
        omp = OPENMP_FLAGS.get(ctype, [])
        use_omp = False
        if os.environ.get("BNC_DISABLE_OPENMP", "") not in ("", "0"):
            warnings.warn("bnc: BNC_DISABLE_OPENMP is set: building the serial kernels")
        elif omp and openmp_works(self.compiler, omp):
            use_omp = True
        else:
            warnings.warn("bnc: the compiler has no usable OpenMP: building the serial "
                          "kernels (every call runs on one thread)")
        print(f"bnc: OpenMP {'enabled' if use_omp else 'disabled'}", file=sys.stderr)
        san = []
        if os.environ.get("BNC_SANITIZE", "") not in ("", "0"):
            if ctype != "unix":
                raise RuntimeError("BNC_SANITIZE needs gcc or clang")
            san = SANITIZE_FLAGS
            print("bnc: building with ASan + UBSan", file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = flags + (omp if use_omp else []) + san
            ext.extra_link_args = (omp if use_omp else []) + san[:2]
        super().build_extensions()
        self.ship_core((omp if use_omp else []) + san[:2])

    def ship_core(self, link_args):
        """Put the header, libbnc.a (the extension's C objects) and build.json
        beside the built bnc/_core, so that they are installed with it."""
        objects = self.compiler.object_filenames(C_SOURCES, output_dir=self.build_temp)
        config = {"libraries": ["bnc"] + (["m"] if os.name == "posix" else []),
                  "extra_link_args": link_args}
        pkg = Path(self.build_lib, "bnc")
        include = pkg / "include" / "bnc"
        include.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HERE / "csrc" / "include" / "bnc" / "bnc.h", include / "bnc.h")
        lib = pkg / "lib"
        lib.mkdir(exist_ok=True)
        target = lib / self.compiler.library_filename("bnc")
        if target.exists():  # ar would add to an old archive
            target.unlink()
        self.compiler.create_static_lib(objects, "bnc", output_dir=str(lib))
        (lib / "build.json").write_text(json.dumps(config, indent=1) + "\n")

    def run(self):
        super().run()
        if self.inplace:  # setuptools builds into build_lib, then copies the .so
            for sub in ("include", "lib"):
                shutil.copytree(Path(self.build_lib, "bnc", sub), HERE / "bnc" / sub,
                                dirs_exist_ok=True)


extension = Extension(
    "bnc._core",
    sources=["bnc/_core.pyx"] + C_SOURCES,
    include_dirs=["csrc/include", "csrc", np.get_include()],
    depends=C_HEADERS + ["bnc/_cbnc.pxd", "bnc/_outcache.h"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
)

setup(
    ext_modules=cythonize(
        [extension],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
