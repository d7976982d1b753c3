"""A header tree whose types are the running kernel's, from its BTF, for BCC's dialect.

BCC compiles C against a kernel header tree (``BCC_KERNEL_SOURCE``) and reads kernel
structs at the offsets clang computes from the struct definitions it sees there; with
another release's headers those offsets are another kernel's. The tree built here keeps
the nearest distribution headers' names and macros but takes every type from the kernel:

* ``vmlinux.h``, dumped from ``/sys/kernel/btf/vmlinux`` by bpftool, defines every type;
* ``macros.h`` holds the macros of the distribution headers BCC and its tools include
  (constants, ``CONFIG_*``, accessors such as ``sk_family``) as ``clang -dM`` lists them,
  less the compiler's predefined ones;
* every other header of the distribution tree is there and empty, so each ``#include``
  resolves, and ``include/linux/kconfig.h``, which BCC includes before anything else,
  includes the two files above. Their include guards keep BCC's own copy of
  ``linux/bpf.h`` from defining its types a second time;
* ``types.json`` indexes ``vmlinux.h`` and the macros (:class:`~ebpf_magic.internal.
  typesubset.Index`), so that a program can be compiled against the part of
  ``vmlinux.h`` it needs: ``kconfig.h`` includes the file the macro :data:`TYPES_MACRO`
  names in its place.

The tree is built once per kernel BTF and distribution tree, in the cache.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from ebpf_magic.internal import cache, files, typesubset
from ebpf_magic.kernel import btf

BTF = Path("/sys/kernel/btf/vmlinux")
STAMP = ".ebpf_magic_complete"
FORMAT = "btf2"  # how the tree is laid out: a change builds trees anew
INDEX = "types.json"
TYPES_MACRO = "__EBPF_MAGIC_TYPES_H"  # a file standing for vmlinux.h (a part of it)
TIMEOUT = 120.0  # seconds for bpftool or clang
# What BCC's helpers.h and the tools BCC ships include: their macros are kept.
INCLUDES = (
    "uapi/linux/bpf.h", "uapi/linux/if_packet.h", "linux/version.h", "linux/log2.h",
    "asm/page.h", "uapi/linux/if_ether.h", "uapi/linux/ptrace.h", "uapi/linux/limits.h",
    "uapi/linux/bpf_perf_event.h", "uapi/linux/openat2.h", "uapi/linux/udp.h",
    "uapi/linux/tcp.h", "uapi/linux/ip.h", "linux/sched.h", "linux/fs.h", "linux/dcache.h",
    "linux/blkdev.h", "linux/blk-mq.h", "linux/tcp.h", "linux/ptrace.h", "linux/nsproxy.h",
    "linux/pid_namespace.h", "linux/mmzone.h", "linux/mm.h", "linux/virtio.h", "linux/uio.h",
    "linux/time64.h", "linux/socket.h", "linux/slub_def.h", "linux/skbuff.h",
    "linux/security.h", "linux/oom.h", "linux/ns_common.h", "linux/nfs_fs.h",
    "linux/mm_types.h", "linux/kasan.h", "linux/irqdesc.h", "linux/irq.h",
    "linux/interrupt.h", "linux/init_task.h", "linux/fs_struct.h", "linux/delay.h",
    "linux/compaction.h", "linux/blk_types.h", "linux/bio.h", "net/sock.h", "net/inet_sock.h",
    "net/net_namespace.h", "net/tcp.h", "net/tcp_states.h", "net/inet_connection_sock.h",
)
_KCONFIG = """\
/* BCC includes this first: the running kernel's types, then the distribution's macros. */
#ifndef __EBPF_MAGIC_BTF_TYPES
#define __EBPF_MAGIC_BTF_TYPES
#define BPF_NO_PRESERVE_ACCESS_INDEX
#ifdef {macro}
#include {macro}
#else
#include "{tree}/vmlinux.h"
#endif
#undef BPF_NO_PRESERVE_ACCESS_INDEX
#include "{tree}/macros.h"
#endif
"""


class Unavailable(Exception):
    """The tree cannot be built here; the message says what is missing."""


def arch() -> str:
    """The kernel's name for this machine's architecture (its ``arch/`` directory)."""
    machine = platform.machine()
    return {"x86_64": "x86", "i686": "x86", "aarch64": "arm64", "ppc64le": "powerpc",
            "s390x": "s390", "riscv64": "riscv", "loongarch64": "loongarch"}.get(machine,
                                                                                 machine)


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        raise Unavailable(f"{name} is not installed")
    return found


def btf_key() -> str:
    """A short hash of the running kernel's BTF: the tree is rebuilt when it changes."""
    try:
        return btf.digest(str(BTF))[:16]
    except OSError as e:
        raise Unavailable(f"the kernel exposes no BTF ({BTF}: {e.strerror})") from None


def tree(distro: Path) -> Path:
    """The tree for the distribution header tree ``distro``, built once.

    Raises :class:`Unavailable` without kernel BTF, bpftool or clang.
    """
    name = f"{FORMAT}.{typesubset.FORMAT}-{btf_key()}-{distro.name}"
    target = cache.cache_dir() / "headers" / name
    for built in (target, cache.SYSTEM_CACHE / "headers" / name):
        if (built / STAMP).exists() and cache.trusted(built):
            return built
    bpftool, clang = _tool("bpftool"), _tool("clang")
    # made only below a directory no one else may write; the eBPF kernel's user must reach
    # root's tree
    cache.make_dirs(target.parent)
    files.make_dirs(target.parent, 0o755, levels=2 if os.geteuid() == 0 else 0)

    def build(tmp: Path) -> None:  # a private new directory: plain writes are safe in it
        _mirror_empty(distro, tmp)
        types = _run([bpftool, "btf", "dump", "file", str(BTF), "format", "c"])
        (tmp / "vmlinux.h").write_bytes(types)
        defines = macros(clang, distro)
        (tmp / "macros.h").write_text(defines)
        (tmp / INDEX).write_text(typesubset.Index.build(types.decode(), defines).to_json())
        kconfig = tmp / "include" / "linux" / "kconfig.h"
        kconfig.parent.mkdir(parents=True, exist_ok=True)
        kconfig.write_text(_KCONFIG.format(tree=target, macro=TYPES_MACRO))
        (tmp / STAMP).write_text(f"{BTF} {btf_key()}\n{distro}\n")

    return files.replace_dir(target, build)


def _mirror_empty(src: Path, dst: Path) -> None:
    """An empty file in ``dst`` for each header in ``src`` (symlinks followed)."""
    for root, _dirs, names in os.walk(src, followlinks=True):
        headers = [f for f in names if f.endswith(".h")]
        if not headers:
            continue
        out = dst / os.path.relpath(root, src)
        out.mkdir(parents=True, exist_ok=True)
        for f in headers:
            (out / f).touch()


def macros(clang: str, distro: Path) -> str:
    """``#define`` lines of :data:`INCLUDES` in ``distro``, less clang's predefined macros."""
    a = arch()
    flags = ["-E", "-dM", "-nostdinc", "-w", "-x", "c",
             "-isystem", _run([clang, "-print-resource-dir"]).decode().strip() + "/include"]
    flags += [f"-I{distro / d}" for d in (
        f"arch/{a}/include", f"arch/{a}/include/generated", "include", f"arch/{a}/include/uapi",
        f"arch/{a}/include/generated/uapi", "include/uapi", "include/generated/uapi")]
    flags += ["-include", str(distro / "include/linux/kconfig.h"), "-D__KERNEL__",
              "-D__BPF_TRACING__", '-DKBUILD_MODNAME="bcc"', f"-D__TARGET_ARCH_{a}"]
    source = "".join(f"#if __has_include(<{h}>)\n#include <{h}>\n#endif\n" for h in INCLUDES)
    # a header's #error (e.g. about compiler features) does not stop the listing
    found = _run([clang, *flags, "-"], source.encode(), check=False).decode()
    builtin = _run([clang, "-E", "-dM", "-x", "c", "-"], b"").decode()
    predefined = {_macro_name(line) for line in builtin.splitlines()}
    return "".join(line + "\n" for line in found.splitlines()
                   if line.startswith("#define ") and _macro_name(line) not in predefined)


def _macro_name(line: str) -> str:
    parts = line.split(None, 2)
    return parts[1].split("(", 1)[0] if len(parts) > 1 else ""


def _run(argv: list[str], stdin: bytes | None = None, check: bool = True) -> bytes:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"{Path(argv[0]).name} failed: {e}") from None
    if check and done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise Unavailable(f"{Path(argv[0]).name} failed: {tail[0]}")
    if not done.stdout:
        raise Unavailable(f"{Path(argv[0]).name} printed nothing")
    return done.stdout
