"""Arrays of more than 2**31 elements: every index in the C core is 64-bit.

One float16 array of 2.2e9 elements (4.4 GB) is normalized in place, once as
(1, 3, L) (channel offsets and the last channel's elements past 2**31) and
once viewed as (L, 3) channels-last (row offsets past 2**31), and its
statistics are taken; values are checked at the start, the middle and the
end of every channel, and everywhere by channel. Marked slow; CI runs it.
"""
import numpy as np
import pytest

import bnc

L = 733_000_000  # 3 * L = 2.199e9 > 2**31 elements
PROBES = (0, 1, L // 2, L - 2, L - 1)


def _mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif((_mem_available() or 0) < 12 * 2**30,
                       reason="needs 12 GiB of available memory (the array is 4.4 GB)"),
]


@pytest.fixture(scope="module")
def big():
    x = np.empty(3 * L, dtype=np.float16)
    assert x.size > 2**31
    return x


def _expected(c, w, b, rm, rv, eps=1e-5):
    inv = 1.0 / np.sqrt(float(rv[c]) + eps)
    normal = np.float16((c + 1 - float(rm[c])) * inv * float(w[c]) + float(b[c]))
    probe = np.float16((-c - 2 - float(rm[c])) * inv * float(w[c]) + float(b[c]))
    return normal, probe


@pytest.mark.parametrize("layout", ["NCL", "LC"])
def test_inference_in_place_past_2_31(big, layout):
    x3 = big.reshape(1, 3, L) if layout == "NCL" else big.reshape(L, 3)
    axis = 1 if layout == "NCL" else -1
    # channel c holds c + 1, except at the probes (-c - 2), so that the
    # statistics and the output depend on the values there
    for c in range(3):
        ch = x3[0, c] if layout == "NCL" else x3[:, c]
        ch[...] = c + 1
        ch[list(PROBES)] = -c - 2
    w = np.array([1.0, -2.0, 0.5], np.float32)
    b = np.array([0.25, 0.0, -1.0], np.float32)
    rm = np.array([0.5, 1.0, 2.0], np.float32)
    rv = np.array([4.0, 1.0, 0.25], np.float32)

    # statistics first (reads every element, offsets past 2**31)
    mean, var, count = bnc.batch_norm_stats(x3, channel_axis=axis)
    assert count == L
    for c in range(3):
        k = len(PROBES)
        m = ((L - k) * (c + 1) + k * (-c - 2)) / L
        v = ((L - k) * (c + 1 - m) ** 2 + k * (-c - 2 - m) ** 2) / L
        assert abs(mean[c] - m) <= 1e-6 * abs(m)
        assert abs(var[c] - v) <= 1e-5 * v

    y = bnc.batch_norm(x3, w, b, rm, rv, training=False, channel_axis=axis, out=x3)
    assert y is x3
    for c in range(3):
        normal, probe = _expected(c, w, b, rm, rv)
        ch = x3[0, c] if layout == "NCL" else x3[:, c]
        for i in PROBES:
            assert ch[i] == probe, (c, i, ch[i], probe)
        for i in (2, L // 2 - 1, L // 2 + 1, L - 3):
            assert ch[i] == normal, (c, i, ch[i], normal)
        # everywhere: the count of probe values and of normal values
        assert int(np.count_nonzero(ch == normal)) == L - len(PROBES)
