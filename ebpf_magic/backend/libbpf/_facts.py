"""What this kernel offers the hooks of SEC() names, for choosing programs (see :mod:`._select`)."""

from __future__ import annotations

from ebpf_magic.backend.libbpf import _select
from ebpf_magic.kernel import btf, kallsyms, tracefs
from ebpf_magic.kernel import host as kernel


def kernel_facts() -> _select.Kernel:
    """What this kernel offers the hooks of SEC() names, asked once per question.

    Tracepoints (also raw and BTF-typed ones: every tracepoint is one) are looked up in
    tracefs's list, kernel functions in kallsyms (kprobes) or BTF (fentry), each read on
    the first question that needs it. Where tracefs cannot be read, tracepoints are
    taken to exist: attaching says whether they do.
    """
    listing: list[frozenset[str] | None] = []

    def tracepoints() -> frozenset[str] | None:
        if not listing:
            try:
                listing.append(frozenset(tracefs.tracepoints()))
            except OSError:
                listing.append(None)
        return listing[0]

    def check(hook: str, section: str, event: str) -> _select.Availability:
        if hook in ("tp", "tracepoint", "tp_btf", "raw_tp", "raw_tracepoint"):
            known = tracepoints()
            if hook in ("tp", "tracepoint"):
                category, _, name = section.partition("/")[2].partition("/")
                event = f"{category}:{name}"
                ok = known is None or event in known
            else:
                ok = known is None or any(t.endswith(f":{event}") for t in known)
            return _select.Availability(ok, "" if ok else f"no tracepoint {event}",
                                        absent=not ok)
        if hook in ("kprobe", "kretprobe"):
            if not kernel.kprobes_supported():
                return _select.Availability(False, "this kernel has no kprobes (CONFIG_KPROBES)")
            ok = event in kallsyms.functions()
        else:  # fentry, fexit: the function's BTF is what they attach by
            ok = bool(btf.vmlinux().find(event, "func"))
        return _select.Availability(ok, "" if ok else f"no kernel function {event}",
                                    absent=not ok)

    return _select.Kernel(check)
