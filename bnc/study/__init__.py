"""The robustness study: what batch normalization buys, measured with bnc.

    pip install "bnc[study]"
    python -m bnc.study              # 2-5 minutes
    python -m bnc.study --quick      # under a minute: checks the pipeline

Small NumPy networks (bnc.study.net) with no normalization, batch norm,
batch renorm, group norm or layer norm are trained on scikit-learn's
handwritten digits with fixed seeds; each claim made for batch norm is
tested and answered with the measured numbers and a one-line verdict in
`<out>/report.md`, with plots (`*.png`, when matplotlib is installed) and the
raw results (`results.json`).
"""
from bnc.study.runner import main, run_study

__all__ = ["main", "run_study"]
