"""Builds bnc_demo, a Cython extension that links bnc's static C core:
    python setup.py build_ext --inplace   (needs bnc, Cython, numpy installed)"""
import bnc
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    name="bnc-demo",
    ext_modules=cythonize(
        [Extension("bnc_demo", ["bnc_demo.pyx"], **bnc.extension_kwargs())],
        compiler_directives={"language_level": 3},
    ),
)
