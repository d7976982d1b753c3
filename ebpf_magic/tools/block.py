"""C and tables the block I/O tools share: a request's disk, operation and size (CO-RE).

``rq_disk(rq)`` finds a request's ``gendisk`` (``rq->q->disk``, or ``rq->rq_disk`` on
kernels before 5.19); ``rq_dev`` packs its major and minor as the kernel's ``dev_t``
(``major << 20 | minor``). The ``disk`` option takes a disk's name, looked up in
``/sys/block`` when the tool starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ebpf_magic.errors import OptionError
from ebpf_magic.tools.tool import Option

REQUEST = r"""
#define REQ_OP_BITS 8
#define REQ_OP_MASK ((1 << REQ_OP_BITS) - 1)
#define MINORBITS 20

const volatile u32 targ_dev = 0;   /* a disk's dev_t, 0 for every disk */

struct request___before_5_19 {
    struct gendisk *rq_disk;
} __attribute__((preserve_access_index));

static __always_inline struct gendisk *rq_disk(struct request *rq)
{
    struct request___before_5_19 *old = (void *)rq;
    if (bpf_core_field_exists(old->rq_disk))
        return BPF_CORE_READ(old, rq_disk);
    return BPF_CORE_READ(rq, q, disk);
}

static __always_inline u32 rq_dev(struct request *rq)
{
    struct gendisk *disk = rq_disk(rq);
    if (!disk)
        return 0;
    return (BPF_CORE_READ(disk, major) << MINORBITS) | BPF_CORE_READ(disk, first_minor);
}

static __always_inline u32 rq_op(struct request *rq)
{
    return BPF_CORE_READ(rq, cmd_flags) & REQ_OP_MASK;
}

static __always_inline bool rq_wanted(struct request *rq)
{
    return !targ_dev || rq_dev(rq) == targ_dev;
}
"""

# enum req_op, the operations a request does
OPS = {0: "read", 1: "write", 2: "flush", 3: "discard", 5: "secure_erase", 7: "zone_append",
       9: "write_zeroes", 10: "zone_open", 11: "zone_close", 12: "zone_finish",
       13: "zone_reset", 15: "zone_reset_all", 34: "drv_in", 35: "drv_out"}


def op_names(values: Any) -> list[str]:
    return [OPS.get(int(v), f"op{int(v)}") for v in values]


def disks() -> dict[int, str]:
    """``{dev_t: name}`` of this machine's disks, from /sys/block."""
    out = {}
    for d in Path("/sys/block").glob("*"):
        try:
            major, minor = (int(x) for x in (d / "dev").read_text().split(":"))
        except (OSError, ValueError):
            continue
        out[major << 20 | minor] = d.name
    return out


def disk_names(devs: Any) -> list[str]:
    known = disks()
    return [known.get(int(d), f"{int(d) >> 20}:{int(d) & 0xFFFFF}") for d in devs]


def disk_dev(name: str) -> int:
    """The ``dev_t`` of disk ``name`` (``sda``, ``loop3``, ``/dev/nvme0n1``)."""
    short = name.removeprefix("/dev/")
    for dev, disk in disks().items():
        if disk == short:
            return dev
    raise OptionError(f"disk: no disk called {name!r} in /sys/block",
                      f"Disks here: {', '.join(sorted(disks().values())) or 'none'}.")


def prepare(options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``targ_dev`` global of the ``disk`` option."""
    return {"targ_dev": disk_dev(options["disk"])} if options.get("disk") else {}


DISK = Option("disk", ("-d", "--disk"), "only this disk (sda, loop0...)", type=str,
              metavar="DISK")
