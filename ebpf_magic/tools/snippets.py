"""C and options tools share: task filters and log2 buckets, for users' tools too.

``ADD`` gives ``MAP_ADD(&map, &key, n)``: add to a hash map's u64 counter, creating it.
``FILTER`` declares the globals ``targ_pid`` (a process, its tgid), ``targ_tid`` (a
thread) and ``targ_comm`` (a command name) and a ``wanted(pid, tid, comm)`` test; the
options :data:`PID`, :data:`TID` and :data:`COMM` set them. ``LOG2`` gives ``log2_slot(v)``,
the bucket :mod:`ebpf_magic.data.histograms` reads (0 holds 0, ``i`` holds
``[2**(i-1), 2**i)``), which :func:`ebpf_magic.tools.frames.log2_table` turns into a table.
"""

from __future__ import annotations

from ebpf_magic.tools.tool import Option, comm, flag, pid

FILTER = r"""
const volatile u32 targ_pid = 0;      /* a process (tgid), 0 for all */
const volatile u32 targ_tid = 0;      /* a thread, 0 for all */
const volatile char targ_comm[16] = {};  /* a command name, "" for all */

static __always_inline bool comm_matches(const char *comm)
{
    if (!targ_comm[0])
        return true;
    for (int i = 0; i < 16; i++) {
        if (comm[i] != targ_comm[i])
            return false;
        if (!comm[i])
            break;
    }
    return true;
}

/* whether a task passes the -p/-t/--comm filters (comm may be NULL when not asked for) */
static __always_inline bool wanted(u32 pid, u32 tid, const char *comm)
{
    if (targ_pid && pid != targ_pid)
        return false;
    if (targ_tid && tid != targ_tid)
        return false;
    if (targ_comm[0] && comm)
        return comm_matches(comm);
    return true;
}

/* whether the current task passes the filters */
static __always_inline bool current_wanted(void)
{
    u64 id = bpf_get_current_pid_tgid();
    char comm[16] = {};
    if (targ_comm[0])
        bpf_get_current_comm(comm, sizeof(comm));
    return wanted(id >> 32, (u32)id, comm);
}
"""

LOG2 = r"""
/* the log2 bucket of v: 0 for 0, else the bit length of v (slot i holds [2^(i-1), 2^i)) */
static __always_inline u32 log2_slot(u64 v)
{
    u32 n = 0;
    if (v >> 32) { v >>= 32; n += 32; }
    if (v >> 16) { v >>= 16; n += 16; }
    if (v >> 8) { v >>= 8; n += 8; }
    if (v >> 4) { v >>= 4; n += 4; }
    if (v >> 2) { v >>= 2; n += 2; }
    if (v >> 1) { v >>= 1; n += 1; }
    return n + (u32)v;
}
"""

ADD = r"""
/* add delta to the u64 kept at *key in hash map m, creating it first */
#define MAP_ADD(m, key, delta) ({                                   \
    u64 __zero = 0, *__n = bpf_map_lookup_elem(m, key);            \
    if (!__n) {                                                    \
        bpf_map_update_elem(m, key, &__zero, BPF_NOEXIST);         \
        __n = bpf_map_lookup_elem(m, key);                         \
    }                                                              \
    if (__n)                                                       \
        __sync_fetch_and_add(__n, delta);                          \
})
"""

PID = Option("pid", ("-p", "--pid"), "only this process (its threads too)", type=pid,
             sets="targ_pid", metavar="PID")
TID = Option("tid", ("-t", "--tid"), "only this thread", type=pid, sets="targ_tid",
             metavar="TID")
COMM = Option("comm", ("--comm",), "only tasks whose command name (comm) is this",
              type=comm, sets="targ_comm", metavar="COMM")
MILLISECONDS = Option("milliseconds", ("-m", "--milliseconds"),
                      "buckets in milliseconds instead of microseconds", type=flag,
                      sets="targ_ms")
PER_PROCESS = Option("per_process", ("-P", "--per-process"), "one histogram per process",
                     type=flag, sets="targ_per_process")
PER_THREAD = Option("per_thread", ("-L", "--per-thread"), "one histogram per thread",
                    type=flag, sets="targ_per_thread")
FAILED = Option("failed", ("-x", "--failed"), "only failed calls", type=flag,
                sets="targ_failed")


def unit(options: dict) -> str:
    """``ms`` or ``us``, as the ``milliseconds`` option chose."""
    return "ms" if options.get("milliseconds") else "us"
