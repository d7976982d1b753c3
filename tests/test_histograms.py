"""BPF_HISTOGRAM buckets against write sizes the test chose, and the bucket maths."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from ebpf_magic.data import histograms
from ebpf_magic.data.histograms import Histogram, from_values, label
from ebpf_magic.program import Program

SRC = r"""
BPF_HISTOGRAM(sizes);
BPF_HISTOGRAM(linear);
struct fd_slot { u32 fd; u64 slot; };
BPF_HISTOGRAM(by_fd, struct fd_slot);
BPF_HISTOGRAM(never);
TRACEPOINT_PROBE(syscalls, sys_enter_write) {
    if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
    if (args->count == 0x7fffffff) never.increment(bpf_log2l(args->count));
    if (args->fd != FD1 && args->fd != FD2) return 0;
    if (args->fd == FD1) {
        sizes.increment(bpf_log2l(args->count));
        linear.increment(args->count / 100);
    }
    struct fd_slot k = {};
    k.fd = args->fd;
    k.slot = bpf_log2l(args->count);
    by_fd.increment(k);
    return 0;
}
"""
WRITES1 = [1, 3, 3, 100, 1024, 1500]
WRITES2 = [7, 7, 7]


@pytest.fixture(scope="module")
def prog():
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    with Program(SRC, defines={"PID": os.getpid(), "FD1": w1, "FD2": w2}) as p:
        for fd, rfd, sizes in ((w1, r1, WRITES1), (w2, r2, WRITES2)):
            for n in sizes:
                os.write(fd, b"x" * n)
                os.read(rfd, 4096)
        yield p, w1, w2
    for fd in (r1, w1, r2, w2):
        os.close(fd)


@pytest.mark.kernel
def test_log2_histogram_buckets(prog):
    p, _, _ = prog
    df = p.maps["sizes"].df
    counts = dict(zip(zip(df["low"], df["high"], strict=True), df["count"], strict=True))
    # bpf_log2l: 1 -> [1], 3 -> [2, 4), 100 -> [64, 128), 1024 and 1500 -> [1K, 2K)
    assert counts[(1, 2)] == 1 and counts[(2, 4)] == 2 and counts[(64, 128)] == 1
    assert counts[(1024, 2048)] == 2
    assert df["count"].sum() == len(WRITES1)
    assert df["low"].min() == 1 and df["high"].max() == 2048  # trimmed to non-empty range
    text = str(p.maps["sizes"].hist())
    lines = text.splitlines()
    assert lines[0] == "@sizes:"
    assert lines[1].startswith("[1]") and lines[1].split("|")[0].split()[-1] == "1"
    assert lines[2].startswith("[2, 4)")
    bar2 = lines[2].split("|")[1]
    assert bar2 == "@" * 52  # the largest bucket (ties at 2) fills the width
    assert lines[-2 if not lines[-1] else -1].startswith("[1K, 2K)")


@pytest.mark.kernel
def test_linear_histogram_override(prog):
    p, _, _ = prog
    h = p.maps["linear"].hist(kind="linear", step=100)
    got = {lo: c for lo, c in zip(h.df["low"], h.df["count"], strict=True) if c}
    assert got == {0: 3, 100: 1, 1000: 1, 1500: 1}
    assert h.labels()[:2] == ["[0, 100)", "[100, 200)"]
    assert len(h.df) == 16  # [0, 100) .. [1500, 1600), empty buckets between included
    # learned from the increments: bpf_log2l() directly or through the key's slot field
    kinds = {name: p.maps[name].hist_kind for name in ("sizes", "linear", "by_fd")}
    assert kinds == {"sizes": "log2", "linear": "linear", "by_fd": "log2"}
    assert p.maps["linear"].df["high"].iloc[0] == 1


@pytest.mark.kernel
def test_keyed_histogram_has_one_section_per_key(prog):
    p, w1, w2 = prog
    df = p.maps["by_fd"].df
    assert list(df.columns) == ["fd", "slot", "low", "high", "count"]
    per_fd = df.groupby("fd")["count"].sum().to_dict()
    assert per_fd == {w1: len(WRITES1), w2: len(WRITES2)}
    fd2 = df[df["fd"] == w2]
    assert fd2[["low", "high", "count"]].values.tolist() == [[4, 8, 3]]
    assert f"@by_fd[{w2}]:" in str(p.maps["by_fd"].hist())


@pytest.mark.kernel
def test_histogram_that_counted_nothing_is_empty(prog):
    import matplotlib

    matplotlib.use("Agg")
    from ebpf_magic.present import plots

    p, _, _ = prog
    df = p.maps["never"].df
    assert list(df.columns) == ["slot", "low", "high", "count"] and df.empty
    h = p.maps["never"].hist()
    assert str(h) == "@never: (empty: nothing counted yet)\n"
    ax = plots.hist(p.maps["never"])
    assert [t.get_text() for t in ax.texts] == ["(empty: nothing counted yet)"]
    assert len(ax.patches) == 0


def test_bucket_labels_like_bpftrace():
    assert [label(lo, hi) for lo, hi in [(0, 1), (1, 2), (2, 4), (512, 1024), (1024, 2048),
                                          (1 << 20, 1 << 21)]] == \
        ["[0]", "[1]", "[2, 4)", "[512, 1K)", "[1K, 2K)", "[1M, 2M)"]
    assert label(10, 20, "linear") == "[10, 20)"


def test_from_values_matches_bpf_log2l_buckets():
    values = [0, 1, 2, 3, 4, 1023, 1024, (1 << 60) + 5]
    assert histograms.log2_slots(np.array(values)).tolist() == [0, 1, 2, 2, 3, 10, 11, 61]
    h = from_values([0, 1, 1, 5])
    assert h.df[["low", "high", "count"]].values.tolist() == [[0, 1, 1], [1, 2, 2], [2, 4, 0],
                                                              [4, 8, 1]]


def test_histogram_from_a_recorded_frame_needs_no_kernel():
    df = pd.DataFrame({"low": [1, 2, 4], "high": [2, 4, 8], "count": [5, 0, 10]})
    h = Histogram(df, name="lat")
    assert h.kind == "log2" and h.total == 15
    lines = str(h).splitlines()
    assert lines[0] == "@lat:"
    assert lines[1] == f"{'[1]':<20}{5:>8} |{'@' * 26:<52}|"
    assert lines[3] == f"{'[4, 8)':<20}{10:>8} |{'@' * 52}|"
    with pytest.raises(ValueError, match="missing"):
        Histogram(pd.DataFrame({"low": [1]}))
