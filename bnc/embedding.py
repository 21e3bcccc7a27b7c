"""Where the C core of an installed bnc is, for programs and extensions that
embed it (docs/guide/embedding.md).

The build ships, inside the package, the public header
(``get_include()/bnc/bnc.h``), the static library of the very objects the
extension bnc._core was linked from (``get_library_dir()/libbnc.a``), and the
flags a program linking it needs (OpenMP, sanitizers). ``extension_kwargs()``
gathers them for a setuptools ``Extension``; a Cython extension then
``cimport``s the nogil kernels from ``bnc.cbnc`` (or ``bnc._cbnc``).
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["get_include", "get_library_dir", "extension_kwargs"]

_PKG = Path(__file__).resolve().parent


def _shipped(sub: str, probe: str) -> Path:
    path = _PKG / sub
    if not (path / probe).is_file():
        raise FileNotFoundError(
            f"bnc: {path / probe} is missing: it is written by the build (pip install ., "
            f"or python setup.py build_ext --inplace in a source tree)")
    return path


def get_include() -> str:
    """The directory holding ``bnc/bnc.h``: pass it as ``-I`` (or ``include_dirs``)."""
    return str(_shipped("include", "bnc/bnc.h"))


def get_library_dir() -> str:
    """The directory holding the static C core ``libbnc.a``: pass it as ``-L``."""
    return str(_shipped("lib", "build.json"))


def extension_kwargs() -> dict:
    """Keyword arguments for ``setuptools.Extension`` that compile against the
    header and link the static C core: include_dirs, library_dirs, libraries
    and extra_link_args (``-fopenmp`` when the core was built with OpenMP).

    Merge them with your own (numpy's include directory, sources, ...). The
    extension gets its own copy of the kernels: the C core keeps no global
    state, so it and bnc._core coexist in one process.
    """
    lib = get_library_dir()
    config = json.loads((Path(lib) / "build.json").read_text())
    return {
        "include_dirs": [get_include()],
        "library_dirs": [lib],
        "libraries": list(config["libraries"]),
        "extra_link_args": list(config["extra_link_args"]),
    }
