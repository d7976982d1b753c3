"""The part of vmlinux.h a program needs: kept declarations, their order, what clang asks for,
and programs compiled against it doing exactly what they do against the whole header."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import time

import pytest

from ebpf_magic.internal import typesubset
from ebpf_magic.internal.typesubset import Index

HEADER = """\
#ifndef __VMLINUX_H__
#define __VMLINUX_H__

typedef unsigned int __u32;

typedef __u32 u32;

typedef unsigned long long u64;

struct list_head {
\tstruct list_head *next;
\tstruct list_head *prev;
};

enum state {
\tIDLE = 0,
\tBUSY = 1,
};

struct inner {
\tu32 a;
\tenum state st;
};

struct mm {
\tu64 start;
};

typedef int (*visit_fn)(struct mm *, u32);

struct task {
\tu32 pid;
\tstruct inner in;
\tstruct list_head tasks;
\tstruct mm *mm;
\tvisit_fn visit;
\tunsigned int flag: 1;
};

struct unused {
\tu64 x;
};

#endif /* __VMLINUX_H__ */
"""


def _declared(text: str) -> list[str]:
    """The definitions in a header, in order (tags defined with a body, typedef names)."""
    out = []
    for chunk in (c.strip() for c in text.split("\n\n")):
        m = re.match(r"(struct|union|enum) (\w+) \{", chunk)
        if m:
            out.append(f"{m.group(1)} {m.group(2)}")
        elif chunk.startswith("typedef"):
            out.append(re.findall(r"\w+", chunk.split("(")[1] if "(*" in chunk else chunk)[-1])
    return out


def test_the_cut_keeps_what_is_held_by_value_in_the_header_s_order():
    index = Index.build(HEADER)
    cut = index.header({"struct task"})
    assert _declared(cut) == ["__u32", "u32", "struct list_head", "enum state", "struct inner",
                              "visit_fn", "struct task"]
    # reached only through a pointer: declared, not defined
    assert "struct mm;\n" in cut and "struct mm {" not in cut
    assert cut.startswith("#ifndef __VMLINUX_H__\n#define __VMLINUX_H__\n")
    assert cut.rstrip().endswith("#endif /* __VMLINUX_H__ */")
    assert "struct unused" not in cut
    # an enumerator names its enum; a typedef its type
    assert _declared(index.header({"BUSY"})) == ["enum state"]
    assert _declared(index.header({"u32"})) == ["__u32", "u32"]
    assert index.known({"struct task", "BUSY", "visit_fn", "nothing", "struct nothing"}) == {
        "struct task", "BUSY", "visit_fn"}
    again = Index.from_json(index.to_json(), HEADER)
    assert again is not None and again.header({"struct task"}) == cut
    assert Index.from_json(index.to_json(), HEADER + " ") is None  # another header


def test_a_preprocessor_block_is_kept_with_what_it_needs():
    # as kfunc prototypes are appended to vmlinux.h: one block, inside the include guard
    block = ("#ifndef KFUNCS\n"
             "extern int walk(struct task *t, visit_fn fn, enum state s) __attribute__((weak));\n"
             "#endif")
    text = HEADER.replace("#endif /* __VMLINUX_H__ */", block + "\n\n#endif /* __VMLINUX_H__ */")
    cut = Index.build(text).header(set())
    assert block in cut
    assert _declared(cut) == ["__u32", "u32", "enum state", "visit_fn"]
    assert "struct task;\n" in cut and "struct mm;\n" in cut


def test_macros_name_what_their_bodies_use():
    macros = "#define TASK_OF(p) ((struct task *)(p))\n#define ME TASK_OF(0)\n#define N 3\n"
    index = Index.build(HEADER, macros)
    assert {"struct task", "TASK_OF"} <= index.seeds("x = ME->pid;")
    assert "struct task" not in index.seeds("x = N; // TASK_OF in a comment")


def test_names_clang_asks_for():
    log = """\
cell.c:3:5: error: incomplete definition of type 'struct mm'
cell.c:4:5: error: unknown type name 'visit_fn'
cell.c:5:9: error: use of undeclared identifier 'BUSY'
cell.c:6:1: error: variable has incomplete type 'task_t' (aka 'struct task')
cell.c:7:1: error: implicit declaration of function 'bpf_thing' is invalid in C99 [-Werror]
cell.c:8:8: error: type specifier missing, defaults to 'int' [-Werror,-Wimplicit-int]
static __s64 (*helper)(struct list_head *);
       ^
h.h:1:1: warning: declaration of 'struct xdp_md' will not be visible outside of this function
"""
    assert typesubset.missing(log) == {
        "struct mm", "visit_fn", "BUSY", "task_t", "struct task", "bpf_thing", "static",
        "__s64", "helper", "struct list_head", "struct xdp_md"}


# -- against the kernel's own vmlinux.h ----------------------------------------------------

def _vmlinux() -> str:
    from ebpf_magic.backend.libbpf import _compile

    if not _compile.BTF_PATH.exists() or not shutil.which("clang") or not _compile.bpftool():
        pytest.skip("needs the kernel's BTF, bpftool and clang")
    return (_compile.vmlinux_dir() / "vmlinux.h").read_text()


def _syntax(tmp_path, header: str, cell: str, *flags: str) -> subprocess.CompletedProcess:
    (tmp_path / "vmlinux.h").write_text(header)
    (tmp_path / "cell.c").write_text('#include "vmlinux.h"\n' + cell)
    return subprocess.run(["clang", "-fsyntax-only", "-target", "bpf", *flags,
                           str(tmp_path / "cell.c")], capture_output=True, text=True)


def test_every_type_compiles_with_its_cut(tmp_path):
    text = _vmlinux()
    start = time.monotonic()
    index = Index.build(text)
    built = time.monotonic() - start
    tags = sorted(n for n in re.findall(r"^(?:struct|union) \w+(?= \{)", text, re.M))
    chosen = random.Random(7).sample(tags, 60) + ["struct task_struct", "struct sk_buff",
                                                  "struct sock", "union bpf_attr"]
    # each used by value, as a field and through a pointer: the cut defines what it must
    cell = "".join(f"{t} v{i}; {t} *p{i};\n" for i, t in enumerate(chosen))
    cut = index.header(index.seeds(cell))
    done = _syntax(tmp_path, cut, cell, *typesubset.STRICT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(cut) < len(text) / 3, (len(cut), built)


def test_a_missing_typedef_is_an_error_not_a_function(tmp_path):
    text = _vmlinux()
    index = Index.build(text)
    # a typedef, or a function of that name? (one the kfunc prototypes every cut keeps
    # do not use)
    cell = "long f(void) { return loff_t(1); }\n"
    assert " loff_t;" not in index.header(set())
    done = _syntax(tmp_path, index.header(set()), cell, *typesubset.STRICT)
    assert done.returncode != 0
    assert "loff_t" in index.known(typesubset.missing(done.stderr))
    # the whole header refuses the cell as well: the cut does not change the verdict...
    assert _syntax(tmp_path, text, cell, *typesubset.STRICT).returncode != 0
    # ...where without the strict flags clang would have called a function __s64 instead
    assert _syntax(tmp_path, index.header(set()), cell).returncode == 0


def test_dereferencing_a_pointer_asks_for_its_struct(tmp_path):
    index = Index.build(_vmlinux())
    cell = "u64 f(struct task_struct *t) { return t->mm->arg_start; }\n"
    done = _syntax(tmp_path, index.header(index.seeds(cell)), cell, *typesubset.STRICT)
    assert index.known(typesubset.missing(done.stderr)) == {"struct mm_struct"}
    names = index.seeds(cell) | {"struct mm_struct"}
    assert _syntax(tmp_path, index.header(names), cell, *typesubset.STRICT).returncode == 0


@pytest.mark.skipif(os.environ.get("EBPF_MAGIC_SLOW") != "1",
                    reason="every struct of the kernel, one by one: EBPF_MAGIC_SLOW=1")
def test_every_struct_alone(tmp_path):
    text = _vmlinux()
    index = Index.build(text)
    for t in re.findall(r"^(?:struct|union) \w+(?= \{)", text, re.M):
        cell = f"{t} v;\n"
        done = _syntax(tmp_path, index.header({t}), cell, *typesubset.STRICT)
        assert done.returncode == 0, (t, done.stderr[-1000:])


# -- the same program either way: the kernel's view of the loaded instructions ---------------

BCC_TASK = """\
#include <linux/sched.h>
struct reading { u32 tgid; u32 parent; u64 start; char comm[TASK_COMM_LEN]; };
BPF_PERF_OUTPUT(readings);
BPF_HASH(counts, u32, u64);
TRACEPOINT_PROBE(sched, sched_process_exec) {
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct reading r = {};
    r.tgid = task->tgid;
    r.parent = task->real_parent->tgid;
    r.start = task->mm->arg_start;
    bpf_get_current_comm(&r.comm, sizeof(r.comm));
    readings.perf_submit(args, &r, sizeof(r));
    counts.increment(r.tgid);
    return 0;
}
"""

LIBBPF_TASK = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } out SEC(".maps");
SEC("tp_btf/sched_process_exec")
int on_exec(u64 *ctx)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct { u32 tgid; u32 parent; u64 start; } *r = bpf_ringbuf_reserve(&out, sizeof(*r), 0);
    if (!r)
        return 0;
    r->tgid = BPF_CORE_READ(task, tgid);
    r->parent = BPF_CORE_READ(task, real_parent, tgid);
    r->start = BPF_CORE_READ(task, mm, arg_start);
    bpf_ringbuf_submit(r, 0);
    return 0;
}
"""


def _xlated(prog) -> dict[str, str]:
    """The kernel's translation of each loaded program, map ids left out."""
    from ebpf_magic.kernel import sysbpf

    from conftest import bpftool_json

    out = {}
    for name, fd in prog._compiled.program_fds().items():
        [dump] = [bpftool_json("prog", "dump", "xlated", "id", str(sysbpf.prog_info(fd).id))]
        out[name] = re.sub(r"map\[id:\d+\]", "map", json.dumps(dump))
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("backend", ["bcc", "libbpf"])
def test_a_cell_compiled_against_the_cut_is_the_cell_compiled_against_all(backend, monkeypatch,
                                                                          tmp_path, no_leaks):
    from ebpf_magic.backend import libbpf
    from ebpf_magic.backend.bcc import headers
    from ebpf_magic.backend.bcc import program as bcc_program
    from ebpf_magic.backend.libbpf import _compile
    from ebpf_magic.internal import settings
    from ebpf_magic.program import Program

    if backend == "libbpf" and not libbpf.available()[0]:
        pytest.skip(libbpf.available()[1])
    if backend == "bcc" and headers.ensure().source != headers.BTF_SOURCE:
        pytest.skip("BCC compiles against the kernel's own headers here, not BTF types")
    monkeypatch.setattr(settings, "cache", False)
    cell = BCC_TASK if backend == "bcc" else LIBBPF_TASK
    kept = []
    for cut in (True, False):
        monkeypatch.setattr(bcc_program, "CUT_TYPES", cut)
        monkeypatch.setattr(_compile, "SUBSET_TRIES", 4 if cut else 0)
        with Program(cell) as prog:
            assert prog._compiled.cut == cut
            kept.append(_xlated(prog))
    assert kept[0] == kept[1] and kept[0]
