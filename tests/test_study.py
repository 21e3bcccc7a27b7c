"""The robustness study (python -m bnc.study): the pipeline end to end on
its quick configuration, and the pieces its verdicts rest on."""
import json

import numpy as np
import pytest

pytest.importorskip("sklearn", reason='the study needs scikit-learn: pip install "bnc[study]"')

from bnc.study import experiments as ex  # noqa: E402
from bnc.study import runner as study_main  # noqa: E402
from bnc.study.net import MLP, forward_folded, softmax_xent  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    msgs = []
    r = study_main.run_study(out, quick=True, progress=msgs.append)
    return out, r, msgs


def test_quick_study_writes_the_report(quick_run):
    out, r, msgs = quick_run
    report = (out / "report.md").read_text()
    data = json.loads((out / "results.json").read_text())
    assert len(data["verdicts"]) == 9
    for v in data["verdicts"]:
        assert v["claim"] in report and v["evidence"] in report
        assert isinstance(v["supported"], bool)
    for section in ("convergence", "learning_rate", "init_scale", "small_batch",
                    "robustness", "inference"):
        assert section in data
    assert set(data["convergence"]) == {"none", "batch", "renorm", "group", "layer"}
    assert len(msgs) > 10 and msgs[-1].startswith("done")
    pytest.importorskip("matplotlib")
    for png in ("headline.png", "robustness.png"):
        assert (out / png).stat().st_size > 1000
        assert f"]({png})" in report


def test_batch_norm_trains_faster_than_none_on_digits():
    """The quick configuration's premise: with batch norm the MLP reaches a
    higher validation accuracy after one epoch (seeds 0-2)."""
    d = ex.load_digits_split()
    bn = [ex.train(d, "batch", epochs=1, seed=s, track_train=False).val_acc[-1]
          for s in range(3)]
    none = [ex.train(d, "none", epochs=1, seed=s, track_train=False).val_acc[-1]
            for s in range(3)]
    assert np.mean(bn) > np.mean(none)


@pytest.mark.parametrize("norm", ["none", "batch", "renorm", "group", "layer"])
def test_network_gradient_matches_finite_differences(norm):
    """The hand-written backward of the study's MLP (through bnc.layers),
    checked on a few weights by central differences of the loss."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 64))
    y = rng.integers(0, 10, 16)
    model = MLP(norm, rng, width=16, dtype=np.float64)

    def loss():
        return softmax_xent(model.forward(x), y)[0]

    _, g = softmax_xent(model.forward(x), y)
    model.backward(g)
    W = model.lin[0].W
    analytic = model.lin[0].dW.copy()
    h = 1e-6
    for i, j in [(0, 0), (3, 5), (10, 15), (63, 7)]:
        old = W[i, j]
        W[i, j] = old + h
        lp = loss()
        W[i, j] = old - h
        lm = loss()
        W[i, j] = old
        num = (lp - lm) / (2 * h)
        assert abs(num - analytic[i, j]) <= 1e-6 + 1e-5 * abs(num), (i, j, num, analytic[i, j])


def test_folding_gives_the_same_predictions():
    d = ex.load_digits_split()
    run = ex.train(d, "batch", epochs=1, track_train=False)
    m = run.model.eval()
    ref = m.forward(d.x_val)
    got = forward_folded(m.fold(), d.x_val)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_perturbations():
    x = np.random.default_rng(0).uniform(0, 1, (5, 64)).astype(np.float32)
    same = ex.perturb_shift(x, 0.0, 1.0)
    np.testing.assert_allclose(same, x, atol=1e-6)
    brighter = ex.perturb_shift(x, 0.2, 1.0)
    assert np.all(brighter >= same - 1e-7) and brighter.max() <= 1.0
    flat = ex.perturb_shift(x, 0.0, 0.0)
    np.testing.assert_allclose(flat, np.repeat(x.mean(1, keepdims=True), 64, 1), atol=1e-6)
    noisy = ex.perturb_noise(x, 0.1, np.random.default_rng(1))
    assert 0.05 < np.std(noisy - x) < 0.2
