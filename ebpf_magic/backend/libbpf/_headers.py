"""What a cell written for current libbpf needs from headers that an older libbpf lacks.

Two things, both generated or kept here:

* ``include/bpf/``: small headers that shadow libbpf's ``bpf_helpers.h``,
  ``bpf_tracing.h`` and ``bpf_core_read.h``. Each includes the installed one
  (``#include_next``), then defines what newer libbpf releases added and the
  installed release lacks (``BPF_UPROBE``, ``bpf_ksym_exists``, ``__kptr_untrusted``,
  ``bpf_for``...), each under ``#ifndef`` so that a newer installed libbpf wins.
  They are this project's definitions, compatible with libbpf's documented
  behaviour.
* kfunc prototypes: the kernel functions BPF programs may call (tagged
  ``bpf_kfunc`` in the kernel's BTF), declared ``__weak __ksym`` as C, appended to
  the generated ``vmlinux.h`` (bpftool 7.1 writes none). A cell may test one with
  ``bpf_ksym_exists(name)``; ``-DBPF_NO_KFUNC_PROTOTYPES`` leaves them out.
"""

from __future__ import annotations

import re
from pathlib import Path

from ebpf_magic.kernel import btf

INCLUDE_DIR = Path(__file__).resolve().parent / "include"
HELPER_DEFS = Path("/usr/include/bpf/bpf_helper_defs.h")
NO_KFUNCS = "BPF_NO_KFUNC_PROTOTYPES"
NO_KFUNC_GUARD = "__EBPF_MAGIC_KFUNCS__"
# names current libbpf's headers define as macros; a cell that uses one on a libbpf whose
# headers lack it (and that our include/bpf does not supply) gets a hint naming it
NEWER_LIBBPF_MACROS = frozenset({
    "BPF_UPROBE", "BPF_URETPROBE", "BPF_KSYSCALL", "BPF_KPROBE_SYSCALL", "BPF_PROG2",
    "BPF_USDT", "BPF_UPROBE_SYSCALL", "bpf_ksym_exists", "bpf_for", "bpf_for_each",
    "bpf_repeat", "bpf_core_cast", "__kptr", "__kptr_untrusted", "__percpu_kptr", "__contains",
    "__arg_ctx", "__arg_nonnull", "__arg_nullable", "__arg_trusted", "__arg_arena", "__uptr",
    "__ulong", "can_loop", "cond_break", "bpf_cmp_likely", "bpf_cmp_unlikely", "likely",
    "unlikely", "barrier_var", "__bpf_fastcall", "bpf_stream_printk",
})
_HELPER = re.compile(r"\(\s*\*\s*(\w+)\s*\)\s*\(")
_ENDIF = re.compile(rb"#endif[^\n]*\n?\s*\Z")


def helper_names() -> set[str]:
    """The BPF helpers the installed ``bpf_helper_defs.h`` declares (as function pointers)."""
    try:
        return set(_HELPER.findall(HELPER_DEFS.read_text()))
    except OSError:
        return set()


def kfuncs(spec: btf.Spec) -> dict[str, str]:
    """``{name: C declaration}`` of every function the kernel's BTF tags ``bpf_kfunc``."""
    out = {}
    for tag in spec.find("bpf_kfunc", "decl_tag"):
        func = spec.type(tag.type)
        if func.kind == "func" and func.name and tag.component_idx == -1:
            decl = btf.c_decl(spec, func.id)
            if "{...}" not in decl:  # an anonymous type cannot be named in C
                out[func.name] = decl
    return dict(sorted(out.items()))


def kfunc_prototypes(spec: btf.Spec) -> str:
    """The C block appended to ``vmlinux.h``: one weak ``.ksyms`` extern per kfunc.

    Names that are also BPF helpers in the installed headers are left out (a helper
    is a function pointer there, which an extern function would clash with).
    """
    helpers = helper_names()
    lines = [f"#ifndef {NO_KFUNC_GUARD}", f"#define {NO_KFUNC_GUARD}",
             f"#ifndef {NO_KFUNCS}",
             "/* kfuncs of the running kernel, from its BTF (bpf_kfunc decl tags) */"]
    for name, decl in kfuncs(spec).items():
        if name not in helpers:
            lines.append(f"extern {decl} __attribute__((weak)) "
                         '__attribute__((section(".ksyms")));')
    lines += [f"#endif /* {NO_KFUNCS} */", f"#endif /* {NO_KFUNC_GUARD} */", ""]
    return "\n".join(lines)



def with_kfuncs(vmlinux_h: bytes, spec: btf.Spec) -> bytes:
    """bpftool's ``vmlinux.h`` with the kfunc prototypes inside its include guard."""
    block = kfunc_prototypes(spec).encode()
    m = _ENDIF.search(vmlinux_h)
    if m is None:
        return vmlinux_h + b"\n" + block
    return vmlinux_h[:m.start()] + block + b"\n" + vmlinux_h[m.start():]


def declared_kfuncs(vmlinux_h: Path) -> set[str]:
    """The kfunc names a generated ``vmlinux.h`` declares."""
    try:
        text = vmlinux_h.read_text()
    except OSError:
        return set()
    at = text.find(f"#ifndef {NO_KFUNCS}")
    if at < 0:
        return set()
    return set(re.findall(r"\b(\w+)\((?:[^()]|\([^()]*\))*\) __attribute__\(\(weak\)\)",
                          text[at:]))
