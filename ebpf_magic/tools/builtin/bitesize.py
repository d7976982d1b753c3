"""bitesize: the sizes of block I/Os, as log2 histograms per command.

Each request is counted when submitted (``block_io_start``, in the submitter's context;
on kernels without it, at ``block_rq_issue``) by its size in KiB.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ebpf_magic.tools import block, frames
from ebpf_magic.tools.snippets import ADD, COMM, FILTER, LOG2, PID
from ebpf_magic.tools.tool import Reading, Tool, ToolRun, Variant

COMMON = FILTER + LOG2 + ADD + block.REQUEST + r"""
struct size_key {
    u32 slot;
    char comm[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 14);
    __type(key, struct size_key);
    __type(value, u64);
} hist SEC(".maps");

static __always_inline void count(struct request *rq)
{
    if (!rq_wanted(rq) || !current_wanted())
        return;
    struct size_key key = {.slot = log2_slot(BPF_CORE_READ(rq, __data_len) / 1024)};
    bpf_get_current_comm(key.comm, sizeof(key.comm));
    MAP_ADD(&hist, &key, 1);
}
"""

AT_START = r"""
SEC("tp_btf/block_io_start")
int BPF_PROG(on_io_start, struct request *rq)
{
    count(rq);
    return 0;
}
"""

AT_ISSUE = r"""
SEC("tp_btf/block_rq_issue")
int BPF_PROG(on_issue, struct request *rq)
{
    count(rq);
    return 0;
}
"""


def table(r: Reading) -> pd.DataFrame:
    """Log2 buckets of I/O size per command: comm, low_kib, high_kib (KiB; [0, 1) holds
    I/Os under 1 KiB), count."""
    df = r.maps("hist").rename(columns={"value": "count"})
    return frames.log2_table(df, "kib", by=["comm"])


def plot(run: ToolRun, ax: Any) -> Any:
    """The size histograms, one bar group per command."""
    return frames.plot_histogram(run.df, "kib", ax, "I/O size", by=["comm"], name="bitesize")


TOOL = Tool(
    name="bitesize",
    answers="How big are the block I/Os each command does?",
    source=[Variant("block_io_start", COMMON + AT_START,
                    about="counted in the submitter's context (Linux 6.5 and later)"),
            Variant("issue", COMMON + AT_ISSUE, about="counted at issue")],
    table=table, plot=plot, options=[PID, COMM, block.DISK], prepare=block.prepare,
    interval=True,
)
