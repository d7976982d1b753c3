"""Which public libbpf programs run verbatim on this kernel, and why the others do not.

Each ``*.bpf.c`` of the directories given (libbpf-bootstrap's ``examples/c``, bcc's
``libbpf-tools``) is compiled, loaded and attached with the libbpf backend as a
user pastes it into a cell: the file's text unchanged, its own directory on ``-I``,
nothing else chosen. Programs whose ``SEC()`` names no target get the target the
tool's own user space attaches by default (:data:`ATTACH`: a libc function, a
sampling rate, a device, a socket), as a user gives it with ``-a``. Prints one
line per file and a tally:

- ``runs``: compiled, loaded, and every program with a target attached;
- ``kernel``: it needs a hook this kernel lacks (kprobes, fentry/fexit, LSM,
  hardware perf counters), named in the row;
- ``target``: it needs an attach target that is absent here (a JVM library, USDT
  notes Debian's libc does not have, the tool's own binary);
- ``ours``: anything else, which is a fault of ebpf_magic.

The corpora are not part of this repository; fetch them and give their directories::

    git clone https://github.com/libbpf/libbpf-bootstrap
    git clone https://github.com/iovisor/bcc
    .venv/bin/python bench/libbpf_corpus.py libbpf-bootstrap/examples/c bcc/libbpf-tools

Run as root. ``--json FILE`` writes the rows too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ebpf_magic.errors import AttachError, BPFError, CompileError, VerifierError
from ebpf_magic.kernel.link import wait_released
from ebpf_magic.program import Program

# What each tool's user space attaches where the SEC() name gives no target (its defaults).
# "{socket}" is the fd of a raw packet socket on lo; "{uprobed}" a binary with the
# functions libbpf-bootstrap's uprobe example traces in itself.
ATTACH = {
    "gethostlatency": ["uprobe:c:getaddrinfo=handle_entry",
                       "uretprobe:c:getaddrinfo=handle_return"],
    "profile": ["profile:hz:49"],  # libbpf-tools' and libbpf-bootstrap's
    "runqlen": ["profile:hz:99"],
    "cpufreq": ["profile:hz:99"],
    "llcstat": ["hardware:cache-misses:100=on_cache_miss",
                "hardware:cache-references:100=on_cache_ref"],
    "tc": ["tc:lo:ingress=tc_ingress"],
    "sockfilter": ["socket:{socket}=socket_handler"],
    "uprobe": ["uprobe:{uprobed}:uprobed_add=uprobe_add",
               "uretprobe:{uprobed}:uprobed_add=uretprobe_add"],
    "bashreadline": ["uretprobe:/bin/bash:readline=printret"],
}
# Programs a tool attaches only when asked (memleak's uprobes with -p PID), or whose target
# is absent here (javagc's USDT probes are in a JVM's libjvm.so): left unattached, as named.
UNATTACHED = {
    "memleak": "its uprobes are for -p PID (user-space allocations); kernel mode by default",
    "javagc": "target: USDT probes of a JVM (libjvm.so), none here",
}
# SEC() prefixes of hooks this kernel lacks (see /work/shared/kernel-notes.md)
LACKING = {"kprobe": "kprobes", "kretprobe": "kprobes", "ksyscall": "kprobes",
           "kretsyscall": "kprobes", "fentry": "fentry", "fexit": "fentry", "fmod_ret": "fentry",
           "fentry.s": "fentry", "fexit.s": "fentry", "lsm": "LSM", "lsm.s": "LSM"}
_SECTION = re.compile(r'SEC\s*\(\s*"([^"]*)"\s*\)\s*\n?\s*(?:static\s+)?(?:__\w+\s+)?'
                      r'int\s+(?:BPF_\w+\s*\(\s*)?(\w+)')
UPROBED = r"""
__attribute__((noinline)) int uprobed_add(int a, int b) { return a + b; }
__attribute__((noinline)) int uprobed_sub(int a, int b) { return a - b; }
int main(void) { return uprobed_add(1, 2) - uprobed_sub(4, 1); }
"""


def sections(source: str) -> dict[str, str]:
    """``{function: SEC() name}`` as the source writes them."""
    return {m.group(2): m.group(1) for m in _SECTION.finditer(source)}


def classify(error: BaseException, source: str) -> tuple[str, str]:
    """``(kind, reason)`` of a failure: kernel, target or ours."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    secs = sections(source)
    function = ""
    if isinstance(error, VerifierError):
        function = error.function
    elif isinstance(error, AttachError):
        m = re.search(r'SEC\("[^"]*"\) (\w+)|=(\w+)', text)
        function = (m.group(1) or m.group(2)) if m else ""
    prefix = secs.get(function, "").split("/")[0]
    if prefix in LACKING:
        return "kernel", f"{LACKING[prefix]}: {function} ({secs[function]})"
    if isinstance(error, AttachError) and "hardware" in (error.probe or ""):
        return "kernel", f"hardware perf counters: {error.probe}"
    if isinstance(error, AttachError) and re.search(r"usdt|resolve|No such file", text) and \
            prefix in ("usdt", "uprobe", "uretprobe"):
        return "target", f"{function} ({secs.get(function)}): {first}"
    return "ours", f"{type(error).__name__}: {first}"


def doubled(attached: list[str]) -> list[str]:
    """Events more than one attached program hooks (variants of one probe, all attached)."""
    seen: dict[str, set[str]] = {}
    for a in attached:
        spec, _, function = a.partition("=")
        kind, _, target = spec.split(" ")[0].partition(":")
        event = target.split(":")[-1] if kind in ("tracepoint", "rawtracepoint") else spec
        seen.setdefault(event, set()).add(function)
    return sorted(e for e, fns in seen.items() if len(fns) > 1)


def run_one(path: Path, extra: dict[str, str]) -> dict:
    source = path.read_text()
    name = path.name.removesuffix(".bpf.c")
    attach = [a.format(**extra) for a in ATTACH.get(name, [])]
    row = {"file": str(path), "tool": name}
    start = time.perf_counter()
    try:
        with Program(source, name=name.replace("-", "_"), attach=attach,
                     cflags=["-I", str(path.parent)], backend="libbpf") as prog:
            row.update(kind="runs", reason="", attached=list(prog.attached),
                       not_attached=prog.unattached, notes=list(prog.notes))
            twice = doubled(prog.attached)
            if twice:
                row.update(kind="ours", reason=f"events attached twice: {', '.join(twice)}")
            elif prog.unattached:
                why = UNATTACHED.get(name, "")
                row.update(kind="target" if why.startswith("target:") else
                           "runs" if why else "ours",
                           reason=why or f"not attached: {', '.join(prog.unattached)}")
            for it in getattr(prog, "iter", {}).values():
                row["reason"] += f"{it.name}: {len(it.df)} rows; "
    except (BPFError, OSError) as e:
        kind, reason = classify(e, source)
        row.update(kind=kind, reason=reason, attached=[])
        if not isinstance(e, (CompileError, VerifierError, AttachError)) and kind == "ours":
            row["detail"] = str(e)[-600:]
        if isinstance(e, CompileError):
            row["detail"] = "\n".join(e.diagnostics[:6])
    row["seconds"] = round(time.perf_counter() - start, 2)
    wait_released(5.0)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="directories of *.bpf.c files")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("-k", default="", help="only files whose name contains this")
    parser.add_argument("-v", action="store_true", help="print compile diagnostics")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, \
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
        raw.bind(("lo", 0))
        binary = Path(tmp) / "uprobed"
        subprocess.run(["gcc", "-O1", "-x", "c", "-", "-o", str(binary)], input=UPROBED,
                       text=True, check=True)
        extra = {"socket": str(raw.fileno()), "uprobed": str(binary)}
        for d in args.dirs:
            for path in sorted(d.glob("*.bpf.c")):
                if args.k not in path.name:
                    continue
                row = run_one(path, extra)
                rows.append(row)
                shown = row["reason"] or ", ".join(row["attached"])
                if row["kind"] == "runs" and row["reason"]:
                    shown = f"{', '.join(row['attached'])}; {row['reason']}"
                print(f"{row['kind']:7} {d.name}/{path.name:26} {shown}"[:220], flush=True)
                if row.get("not_attached"):
                    print(f"{'':8}not attached: {', '.join(row['not_attached'])}")
                if args.v and row.get("detail"):
                    print("        " + row["detail"].replace("\n", "\n        "))
    print()
    for d in args.dirs:
        mine = [r for r in rows if Path(r["file"]).parent == d]
        counts = {k: sum(r["kind"] == k for r in mine) for k in ("runs", "kernel", "target",
                                                                     "ours")}
        print(f"{d}: {len(mine)} files: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
