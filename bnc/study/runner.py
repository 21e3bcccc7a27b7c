"""The study's command line, verdicts and report (see bnc.study)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import bnc
from bnc.study import experiments as ex
from bnc.study.net import NORMS

CONFIGS = {
    # seeds, epochs, grids; "default" takes about 2 minutes of one core
    "default": dict(seeds=[0, 1, 2, 3, 4], epochs=15, lrs=[0.01, 0.1, 0.5, 1.0, 2.0],
                    scales=[0.1, 0.3, 1.0, 3.0, 10.0], batch_sizes=[2, 4, 8, 16, 32, 128],
                    small_batch_epochs=6, noise=[0.0, 0.1, 0.2, 0.3, 0.5],
                    shifts=[(0.0, 1.0), (0.1, 1.0), (0.3, 1.0), (0.0, 0.5), (0.0, 1.5),
                            (0.2, 0.6)], grid_epochs=8, repeats=20),
    "quick": dict(seeds=[0], epochs=3, lrs=[0.1, 2.0], scales=[0.3, 3.0],
                  batch_sizes=[8, 64], small_batch_epochs=1, noise=[0.0, 0.3],
                  shifts=[(0.0, 1.0), (0.3, 1.0)], grid_epochs=2, repeats=3),
}


def _m(d):
    """The mean of a stats dict (None stays None)."""
    return None if d is None else d["mean"]


def _fmt(d, pct=True):
    if d is None or d["mean"] is None:
        return "not reached"
    m, s = d["mean"], d["std"]
    text = f"{100 * m:.1f} ± {100 * s:.1f}%" if pct else f"{m:.2f} ± {s:.2f}"
    if d["n"] < d["of"]:
        text += f" ({d['n']}/{d['of']} runs)"
    return text


def _clearly(a, b):
    """a's mean above b's by more than either spread over seeds (a, b: stats
    dicts of something where higher is better): a difference within the
    seed-to-seed noise does not support a claim."""
    if a is None or b is None or a["mean"] is None:
        return False
    if b["mean"] is None:
        return True
    return a["mean"] - b["mean"] > max(a["std"] or 0.0, b["std"] or 0.0)


def _neg(d):
    return None if d is None or d["mean"] is None else dict(d, mean=-d["mean"])


def verdicts(r):
    """Each claim: (title, verdict, one-line evidence). A claim is supported
    when batch norm's advantage exceeds the spread over seeds."""
    out = []
    conv = r["convergence"]

    def e2t(n):
        d = conv[n]["epochs_to_target"]
        return d["mean"] if d["n"] == d["of"] else None

    bn, none = e2t("batch"), e2t("none")
    ok = bn is not None and (none is None or _clearly(_neg(conv["batch"]["epochs_to_target"]),
                                                      _neg(conv["none"]["epochs_to_target"])))
    out.append(("Faster convergence", ok,
                f"epochs to {100 * ex.TARGET:.0f}% validation accuracy: batch norm "
                f"{_fmt(conv['batch']['epochs_to_target'], False)}, none "
                f"{_fmt(conv['none']['epochs_to_target'], False)}"))

    lr = r["learning_rate"]
    lrs = list(lr["none"])
    bn_acc = [_m(lr["batch"][k]) for k in lrs]
    no_acc = [_m(lr["none"][k]) for k in lrs]
    good = lambda accs: sum(a >= 0.9 for a in accs)  # noqa: E731
    out.append(("Tolerates higher learning rates", good(bn_acc) > good(no_acc) or
                (good(bn_acc) == good(no_acc) and bn_acc[-1] > no_acc[-1] + 0.05),
                f"learning rates (of {lrs}) reaching 90%: batch norm {good(bn_acc)}, none "
                f"{good(no_acc)}; at lr={lrs[-1]}: {100 * bn_acc[-1]:.1f}% vs "
                f"{100 * no_acc[-1]:.1f}%"))

    ini = r["init_scale"]
    spread = lambda n: max(_m(v) for v in ini[n].values()) - min(_m(v) for v in ini[n].values())  # noqa: E731,E501
    out.append(("Less sensitive to weight initialization", spread("batch") < spread("none"),
                f"accuracy range over init scales {list(ini['none'])}: batch norm "
                f"{100 * spread('batch'):.1f} points, none {100 * spread('none'):.1f}"))

    gap_bn, gap_no = _m(conv["batch"]["gap"]), _m(conv["none"]["gap"])
    out.append(("Regularizes (smaller train/validation gap)",
                _clearly(_neg(conv["batch"]["gap"]), _neg(conv["none"]["gap"])),
                f"train - validation accuracy: batch norm {100 * gap_bn:.1f} points, none "
                f"{100 * gap_no:.1f}"))

    rob = r["robustness"]
    noise_levels = list(rob["none"]["noise"])
    hi = noise_levels[-1]
    out.append(("Robust to input noise", _clearly(rob["batch"]["noise"][hi],
                                                  rob["none"]["noise"][hi]),
                f"accuracy with Gaussian noise sigma={hi}: batch norm "
                f"{_fmt(rob['batch']['noise'][hi])}, none {_fmt(rob['none']['noise'][hi])}"))
    shifts = [k for k in rob["none"]["shift"] if k != "b=0.0,c=1.0"]
    mean_shift = lambda n: float(np.mean([_m(rob[n]["shift"][k]) for k in shifts]))  # noqa: E731,E501
    out.append(("Robust to shifts of the input distribution",
                mean_shift("batch") > mean_shift("none"),
                f"mean accuracy over brightness/contrast shifts {shifts}: batch norm "
                f"{100 * mean_shift('batch'):.1f}%, none {100 * mean_shift('none'):.1f}%"))

    sb = r["small_batch"]
    bss = list(sb["batch"])
    small, large = bss[0], bss[-1]
    drop = {n: _m(sb[n][large]) - _m(sb[n][small]) for n in sb}
    out.append(("Small batches hurt batch norm", _clearly(sb["batch"][large], sb["batch"][small]),
                f"accuracy at batch {small} vs {large}: batch norm "
                f"{100 * _m(sb['batch'][small]):.1f}% vs {100 * _m(sb['batch'][large]):.1f}%"))
    out.append(("Batch renorm / group norm address small batches",
                min(drop["renorm"], drop["group"]) < drop["batch"],
                f"loss of accuracy from batch {large} to {small}: batch norm "
                f"{100 * drop['batch']:.1f} points, renorm {100 * drop['renorm']:.1f}, "
                f"group norm {100 * drop['group']:.1f}"))

    inf = r["inference"]
    out.append(("Folding removes batch norm's inference cost",
                inf["speedup"] > 1.0 and inf["same_predictions"],
                f"eval forward of the validation set: separate {inf['separate_ms']:.3f} ms, "
                f"folded {inf['folded_ms']:.3f} ms ({inf['speedup']:.2f}x), predictions "
                f"{'identical' if inf['same_predictions'] else 'DIFFERENT'} (max relative "
                f"difference {inf['max_rel_diff']:.1e})"))
    return out


def run_study(out_dir, quick=False, progress=print):
    """Runs every experiment, writes the report; returns the results dict.

    The arrays are small (batches of 32 x 128), so every library runs on one
    thread: BLAS and OpenMP threads cost more than they bring here, and one
    thread makes the timings repeatable."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - depends on the installation
        threadpool_limits = None
    with bnc.num_threads(1):
        if threadpool_limits is None:
            return _run_study(out_dir, quick, progress)
        with threadpool_limits(1):
            return _run_study(out_dir, quick, progress)


def _run_study(out_dir, quick, progress):
    cfg = CONFIGS["quick" if quick else "default"]
    data = ex.load_digits_split()
    t0 = time.perf_counter()
    norms = list(NORMS)
    r = {"config": {k: v for k, v in cfg.items()}, "norms": norms}
    r["convergence"], runs = ex.convergence(data, norms, cfg["seeds"], cfg["epochs"], progress)
    r["learning_rate"] = ex.grid(data, ["none", "batch"], cfg["seeds"], cfg["grid_epochs"],
                                 progress, "lr", cfg["lrs"])
    r["init_scale"] = ex.grid(data, ["none", "batch"], cfg["seeds"], cfg["grid_epochs"],
                              progress, "scale", cfg["scales"])
    r["small_batch"] = ex.grid(data, ["batch", "renorm", "group"], cfg["seeds"],
                               cfg["small_batch_epochs"], progress, "batch_size",
                               cfg["batch_sizes"], lr=0.05)
    progress("robustness and inference cost")
    r["robustness"] = ex.robustness(data, runs, cfg["noise"], cfg["shifts"])
    r["inference"] = ex.inference_cost(data, runs, cfg["repeats"])
    r["seconds"] = time.perf_counter() - t0
    r["verdicts"] = [{"claim": c, "supported": bool(v), "evidence": e}
                     for c, v, e in verdicts(r)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(r, indent=1))
    plots = _plots(r, out)
    (out / "report.md").write_text(_report(r, plots, quick))
    progress(f"done in {r['seconds']:.0f} s: {out / 'report.md'}")
    return r


def _report(r, plots, quick):
    conv = r["convergence"]
    lines = [
        "# What batch normalization buys: the bnc study",
        "",
        f"{'Quick run (pipeline check; too short for the verdicts to mean much). ' if quick else ''}"  # noqa: E501
        f"scikit-learn's handwritten digits (8x8, 1347 train / 450 validation), an MLP "
        f"64-128-128-10 with a normalization layer after each hidden linear layer, SGD "
        f"with momentum 0.9, batch 32, learning rate 0.1 unless varied, seeds "
        f"{r['config']['seeds']} (mean ± std over seeds). bnc {bnc.__version__}, NumPy "
        f"{np.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"{r['seconds']:.0f} s in all.",
        "",
        "## Verdicts",
        "",
        "| claim | verdict at this scale | measured |",
        "|---|---|---|",
    ]
    for v in r["verdicts"]:
        lines.append(f"| {v['claim']} | {'supported' if v['supported'] else 'not supported'} "
                     f"| {v['evidence']} |")
    lines += ["", "## Convergence and generalization", "",
              f"| normalization | epochs to {100 * ex.TARGET:.0f}% | seconds to "
              f"{100 * ex.TARGET:.0f}% | final validation | train - validation |",
              "|---|---|---|---|---|"]
    for n in r["norms"]:
        c = conv[n]
        lines.append(f"| {n} | {_fmt(c['epochs_to_target'], False)} | "
                     f"{_fmt(c['seconds_to_target'], False)} | {_fmt(c['final_val_acc'])} | "
                     f"{_fmt(c['gap'])} |")
    for key, title, label in (("learning_rate", "Learning-rate tolerance", "lr"),
                              ("init_scale", "Initialization sensitivity",
                               "init scale (x He)"),
                              ("small_batch", "Small batches (learning rate 0.05)",
                               "batch size")):
        g = r[key]
        cols = list(next(iter(g.values())))
        lines += ["", f"## {title}", "", f"| {label} | " + " | ".join(cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for n, row in g.items():
            lines.append(f"| {n} | " + " | ".join(_fmt(row[k]) for k in cols) + " |")
    rob = r["robustness"]
    for kind, title in (("noise", "Gaussian input noise (sigma)"),
                        ("shift", "Brightness / contrast shift (b: added, c: contrast)")):
        cols = list(rob["none"][kind])
        lines += ["", f"## Robustness: {title}", "", "| normalization | " +
                  " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for n in r["norms"]:
            lines.append(f"| {n} | " + " | ".join(_fmt(rob[n][kind][k]) for k in cols) + " |")
    inf = r["inference"]
    lines += ["", "## Inference cost", "",
              f"Eval-mode forward of the 450 validation images: batch norm as its own op "
              f"{inf['separate_ms']:.3f} ms, folded into the linear layers with "
              f"`bnc.fold_batch_norm` {inf['folded_ms']:.3f} ms ({inf['speedup']:.2f}x); "
              f"largest relative difference of the logits {inf['max_rel_diff']:.1e}, "
              f"predictions {'identical' if inf['same_predictions'] else 'different'}."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    else:
        lines += ["", "(No plots: matplotlib is not installed.)"]
    lines += ["", "Raw results: `results.json`.", ""]
    return "\n".join(lines)


def _grid_plot(ax, grid, xlabel, title, log=True):
    """Mean accuracy over a grid (norm -> {value: stats}), a line per norm."""
    for n, row in grid.items():
        ax.plot([float(k) for k in row], [_m(v) for v in row.values()], "o-", label=n)
    ax.set(xscale="log" if log else "linear", xlabel=xlabel, ylabel="validation accuracy",
           title=title)
    ax.legend()


def _plots(r, out):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = []
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    conv = r["convergence"]
    for n in r["norms"]:
        curve = conv[n]["val_acc_curve"]
        axes[0].plot(range(1, len(curve) + 1), curve, label=n)
    axes[0].set(xlabel="epoch", ylabel="validation accuracy", title="Convergence",
                ylim=(0.5, 1.0))
    axes[0].legend()
    _grid_plot(axes[1], r["learning_rate"], "learning rate", "Learning-rate tolerance")
    _grid_plot(axes[2], r["small_batch"], "batch size", "Small batches")
    fig.tight_layout()
    fig.savefig(out / "headline.png", dpi=90)
    plt.close(fig)
    names.append("headline.png")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    _grid_plot(axes[0], r["init_scale"], "init scale (x He)", "Initialization")
    _grid_plot(axes[1], {n: r["robustness"][n]["noise"] for n in r["norms"]}, "noise sigma",
               "Input noise", log=False)
    fig.tight_layout()
    fig.savefig(out / "robustness.png", dpi=90)
    plt.close(fig)
    names.append("robustness.png")
    return names


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bnc.study", description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="a run of under a minute that checks the pipeline end to end")
    ap.add_argument("--out", default="bnc-study", help="output folder (default bnc-study)")
    a = ap.parse_args(argv)
    start = time.perf_counter()

    def progress(msg):
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    r = run_study(a.out, quick=a.quick, progress=progress)
    for v in r["verdicts"]:
        print(f"{'supported    ' if v['supported'] else 'not supported'}  {v['claim']}: "
              f"{v['evidence']}")
    return 0
