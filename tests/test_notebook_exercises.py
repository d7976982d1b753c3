"""The notebooks' exercises, worked through the way a learner does.

Each exercise is a block of cells: the learner's cells (tagged ``exercise``: a ``%%bpf``
program, or Python that sets an answer), the workload and the check (tagged ``check``),
followed by a folded ``<details>`` solution holding one code block per learner cell. A run
goes through each block three times in a row: as the learner finds it, with a typical wrong
answer, and with the solution; the checks must say "not attempted yet", name the mistake,
and say "right". Exercises whose program needs the kernel say so instead wherever the
notebook replays. Runs as in test_notebooks.py: live as root, live in the least-privilege
kernel, and replayed as nobody.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import test_notebooks
from test_notebooks import BOOKS, NOTEBOOKS, check, execute, run_in_ebpf_kernel, shown

# the fixtures test_notebooks.py runs its notebooks with
home = test_notebooks.home
ebpf_kernel = test_notebooks.ebpf_kernel

EXERCISED = [b for b in BOOKS if b[:2] in {"01", "02", "03", "04", "05", "06", "07"}]
# notebooks that replay in the least-privilege kernel (a network namespace needs CAP_SYS_ADMIN)
REPLAYED_IN_EBPF_KERNEL = {"06"}
STATES = ("as found", "wrong", "solution")

# A typical wrong answer for each exercise, in the order of the notebook: {learner cell:
# its text} (other learner cells take the solution's), and words the check's hint must say.
WRONG: dict[str, list[tuple[dict[int, str], list[str]]]] = {
    "01": [({0: "%%bpf ex_calls\nBPF_HASH(calls, u32, u64);\n"
                "TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {\n"
                "    u32 pid = bpf_get_current_pid_tgid();\n"
                "    calls.increment(pid);\n    return 0;\n}"},
           ["each thread on its own", "upper 32 bits", ">> 32"])],
    "02": [({0: "small_writes = int(sizes.loc[sizes['high'] < 1024, 'count'].sum())"},
            ["1000-byte writes are missing", "[512, 1K)"]),
           ({1: "writes_counted = ex_percpu.maps['counts'].df.filter(like='[cpu').iloc[0]"
                ".tolist()"}, ["per-CPU slots", "add them up"])],
    "03": [({0: "dd_bytes = int(df.loc[df['comm'] == 'dd', 'bytes'].sum())"},
            ["standard error (fd 2)", "fd 1"]),
           ({0: "%%bpf ex_opens -D ME=$me\nstruct event { u32 pid; char path[64]; };\n"
                "BPF_PERF_OUTPUT(events);\n"
                "TRACEPOINT_PROBE(syscalls, sys_enter_openat) {\n"
                "    struct event e = {};\n"
                "    e.pid = bpf_get_current_pid_tgid() >> 32;\n"
                "    bpf_probe_read_user_str(&e.path, sizeof(e.path), args->filename);\n"
                "    events.perf_submit(args, &e, sizeof(e));\n    return 0;\n}"},
            ["more than the truth", "filter on the pid"])],
    "04": [({0: "per_interval = [int(buckets['count'].sum()) for _, buckets in history]"},
            ["running totals", "subtract the snapshot before"]),
           ({0: "%%bpf ex_sleep -D PID=$sleeper_pid\nBPF_HASH(start, u32, u64);\n"
                "BPF_HISTOGRAM(usecs);\n"
                "TRACEPOINT_PROBE(syscalls, sys_enter_clock_nanosleep) {\n"
                "    u64 id = bpf_get_current_pid_tgid();\n"
                "    if ((id >> 32) != PID)\n        return 0;\n"
                "    u32 tid = id;\n    u64 now = bpf_ktime_get_ns();\n"
                "    start.update(&tid, &now);\n    return 0;\n}\n"
                "TRACEPOINT_PROBE(syscalls, sys_exit_clock_nanosleep) {\n"
                "    u32 tid = bpf_get_current_pid_tgid();\n"
                "    u64 *t0 = start.lookup(&tid);\n"
                "    if (t0 == 0)\n        return 0;\n"
                "    usecs.increment(bpf_log2l(bpf_ktime_get_ns() - *t0));\n"
                "    start.delete(&tid);\n    return 0;\n}"},
            ["1,000 times larger", "in ns", "asks for µs"])],
    "05": [({0: "self_samples = {f: int(flame.loc[flame['stack'].str.contains(f), 'count'].sum())"
                " for f in ['main', 'work', 'light', 'heavy']}"},
            ["total samples", "last frame"]),
           ({1: "cpu_seconds = int(ex_cpu.maps['samples'].df['value'].sum())"
                " / (999 * os.cpu_count())"}, ["rate of all CPUs", "1/999 s"])],
    "06": [({0: "%%bpf ex_ether -a xdp:ebpfnb0=count\n#include <uapi/linux/if_ether.h>\n"
                "BPF_HASH(types, u32, u64);\n"
                "int count(struct xdp_md *ctx) {\n"
                "    void *data = (void *)(long)ctx->data;\n"
                "    void *data_end = (void *)(long)ctx->data_end;\n"
                "    struct ethhdr *eth = data;\n"
                "    if ((void *)(eth + 1) > data_end)\n        return XDP_PASS;\n"
                "    u32 type = eth->h_proto;\n"
                "    types.increment(type);\n    return XDP_PASS;\n}"},
            ["0x0008 is 0x0800", "network byte order", "bpf_ntohs()"])],
    "07": [({0: "write_ms = df.groupby('comm')['ns'].sum() / 1e6"},
            ["keyed by command name", "two dd processes", "by pid"])],
}


@dataclass
class Exercise:
    """Cells ``first..check`` of a notebook, the learner's among them, and the solution."""

    first: int
    check: int
    learner: list[int]
    solution: list[str]
    program: bool  # the learner writes a %%bpf program: checked only where it runs live


def exercises(book: nbformat.NotebookNode) -> list[Exercise]:
    found, learner = [], []
    for i, cell in enumerate(book.cells):
        tags = cell.metadata.get("tags", [])
        if "exercise" in tags:
            learner.append(i)
        elif "check" in tags:
            assert learner, f"check cell {i} follows no exercise cell"
            details = next(c for c in book.cells[i + 1:] if c.cell_type == "markdown")
            assert details.source.startswith("<details><summary>Solution</summary>"), \
                f"no folded solution right after the check cell {i}"
            blocks = re.findall(r"```(?:c|python)\n(.*?)\n```", details.source, re.S)
            assert len(blocks) == len(learner), (i, blocks)
            found.append(Exercise(learner[0], i, learner, blocks, any(
                book.cells[j].source.startswith("%%bpf") for j in learner)))
            learner = []
    assert not learner, "exercise cells without a check after them"
    return found


def learner_flow(notebook: str, path: Path) -> list[Exercise]:
    """Write ``notebook`` to ``path`` with each exercise's block run three times."""
    book = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    found = exercises(book)
    wrong = WRONG[notebook[:2]]
    assert len(wrong) == len(found), f"{notebook}: {len(found)} exercises, {len(wrong)} wrong"
    cells = []
    last = 0
    for ex, (bad, _) in zip(found, wrong, strict=True):
        cells += book.cells[last:ex.first]
        for state in STATES:
            for i in range(ex.first, ex.check + 1):
                cell = nbformat.from_dict(dict(book.cells[i]))
                cell.metadata = dict(cell.metadata, state=state)
                cell.pop("id", None)
                if i in ex.learner and state != "as found":
                    n = ex.learner.index(i)
                    cell.source = bad.get(n, ex.solution[n]) if state == "wrong" else \
                        ex.solution[n]
                cells.append(cell)
        last = ex.check + 1
    book.cells = cells + book.cells[last:]
    for n, cell in enumerate(book.cells):
        cell["id"] = f"cell-{n}"
    nbformat.write(book, path)
    return found


def verdicts(book: nbformat.NotebookNode) -> list[dict[str, str]]:
    """Each exercise's check output, by state."""
    out: list[dict[str, str]] = []
    for cell in book.cells:
        if "check" in cell.metadata.get("tags", []):
            state = cell.metadata["state"]
            if state == STATES[0]:
                out.append({})
            out[-1][state] = shown(cell)
    return out


def assert_checked(notebook: str, found: list[Exercise], book: nbformat.NotebookNode,
                   live: bool) -> None:
    seen = verdicts(book)
    assert len(seen) == len(found)
    for n, (ex, said, (_, words)) in enumerate(zip(found, seen, WRONG[notebook[:2]],
                                                   strict=True)):
        where = f"{notebook} exercise {n + 1}"
        if ex.program and not live:
            for state in STATES:
                assert said[state].startswith("◌ needs a live kernel:"), (where, state, said)
                assert "replayed" in said[state]
            continue
        assert said["as found"].startswith("… not attempted yet:"), (where, said)
        assert said["wrong"].startswith("✗ not yet:"), (where, said)
        for word in words:
            assert word in said["wrong"], (where, word, said["wrong"])
        assert said["solution"].startswith("✓ right:"), (where, said)


@pytest.mark.parametrize("notebook", EXERCISED)
def test_exercises_check_a_replay(notebook: str, home: Path) -> None:
    found = learner_flow(notebook, home / "flow.ipynb")
    # execute() reads NOTEBOOKS / notebook: an absolute path names the variant itself
    book = execute(str(home / "flow.ipynb"), home, replay=True)
    check(book, replay=True)
    assert_checked(notebook, found, book, live=False)


@pytest.mark.kernel
@pytest.mark.parametrize("notebook", EXERCISED)
def test_exercises_check_live_as_root(notebook: str, home: Path) -> None:
    found = learner_flow(notebook, home / "flow.ipynb")
    book = execute(str(home / "flow.ipynb"), home, replay=False)
    check(book, replay=False)
    assert_checked(notebook, found, book, live=True)


@pytest.mark.kernel
@pytest.mark.parametrize("notebook", EXERCISED)
def test_exercises_check_live_in_the_least_privilege_kernel(notebook: str, home: Path,
                                                            ebpf_kernel) -> None:
    found = learner_flow(notebook, home / "flow.ipynb")
    book, held = run_in_ebpf_kernel(str(home / "flow.ipynb"), ebpf_kernel)
    check(book, replay=False)
    assert held["programs"] == set() and held["bpf_fds"] == {} and held["uprobes"] == []
    assert_checked(notebook, found, book, live=notebook[:2] not in REPLAYED_IN_EBPF_KERNEL)
