"""Facts about the running kernel and this process's rights to use BPF."""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path

from ebpf_magic.kernel import tracefs

CAP_DAC_OVERRIDE = 1
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24
CAP_SYSLOG = 34
CAP_PERFMON = 38
CAP_BPF = 39
CAP_NAMES = {CAP_DAC_OVERRIDE: "CAP_DAC_OVERRIDE", CAP_NET_ADMIN: "CAP_NET_ADMIN",
             CAP_SYS_ADMIN: "CAP_SYS_ADMIN", CAP_SYSLOG: "CAP_SYSLOG",
             CAP_SYS_RESOURCE: "CAP_SYS_RESOURCE", CAP_PERFMON: "CAP_PERFMON",
             CAP_BPF: "CAP_BPF"}


def release() -> str:
    return platform.release()


def version_tuple() -> tuple[int, int]:
    parts = release().split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return 0, 0


def effective_caps() -> int:
    """The process's effective capability mask (CapEff in /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def capabilities() -> list[str]:
    """Names of the BPF-relevant capabilities this process holds."""
    caps = effective_caps()
    return [name for bit, name in sorted(CAP_NAMES.items()) if caps >> bit & 1]


def has_bpf_rights() -> bool:
    """True when this process may load tracing programs (CAP_SYS_ADMIN or CAP_BPF+PERFMON)."""
    caps = effective_caps()
    return bool(caps >> CAP_SYS_ADMIN & 1 or (caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1))


def rights_summary() -> str:
    held = capabilities()
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    return f"running as {who} with {', '.join(held) if held else 'no BPF capabilities'}"


def rights_hint() -> str:
    return ("Loading BPF needs CAP_BPF and CAP_PERFMON (kernel >= 5.8) or CAP_SYS_ADMIN. Run the "
            "notebook kernel with those rights: `python -m ebpf_magic install-kernel --user` "
            "installs a Jupyter kernel that gets them, or start the notebook as root.")


def memlock() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // 1024} KiB"


def btf_available() -> bool:
    return Path("/sys/kernel/btf/vmlinux").exists()


def kernel_config(option: str) -> str | None:
    """The value of CONFIG_<option> from /proc/config.gz or /boot/config-*, if readable."""
    import gzip

    key = f"CONFIG_{option}="
    sources = [Path("/proc/config.gz"), Path(f"/boot/config-{release()}")]
    for src in sources:
        try:
            opener = gzip.open if src.suffix == ".gz" else open
            with opener(src, "rt") as f:
                for line in f:
                    if line.startswith(key):
                        return line.strip().split("=", 1)[1]
                    if line.startswith(f"# CONFIG_{option} is not set"):
                        return "n"
        except OSError:
            continue
    return None


def kprobes_supported() -> bool:
    """False when the kernel has no kprobes (no kprobe_events in tracefs)."""
    path = tracefs.root()
    if path is not None:
        return (path / "kprobe_events").exists()
    return kernel_config("KPROBES") not in ("n", None)


# Every capability's name, by number (linux/capability.h), for showing whole masks.
ALL_CAP_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
    "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
    "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
    "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore")


def cap_names(bits: int) -> list[str]:
    """``cap_*`` names of the bits set in a capability mask (numbers for unknown bits)."""
    return [f"cap_{ALL_CAP_NAMES[c] if c < len(ALL_CAP_NAMES) else c}"
            for c in range(64) if bits >> c & 1]


def process_caps(field: str = "CapEff", pid: int | str = "self") -> int:
    """A capability mask of a process from /proc/PID/status: CapEff, CapPrm, CapAmb, CapBnd."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    return 0


def identity() -> str:
    """This process's user and capabilities: ``uid 999 (ebpf-kernel); effective: ...``."""
    import pwd

    uid = os.getuid()
    try:
        who = f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        who = f"uid {uid}"
    parts = [who]
    every = (1 << len(ALL_CAP_NAMES)) - 1
    for label, field in (("effective", "CapEff"), ("ambient", "CapAmb")):
        bits = process_caps(field)
        held, lacking = cap_names(bits), cap_names(every & ~bits)
        text = ", ".join(held) if held else "none"
        if len(held) > len(lacking):
            text = "all but " + ", ".join(lacking) if lacking else "all"
        parts.append(f"{label}: {text}")
    return "; ".join(parts)


def build() -> str:
    """The running kernel's build, for keys of caches of compiled programs: its release,
    version string and the hash of its BTF (where it has one)."""
    from ebpf_magic.kernel import btf

    uname = os.uname()
    try:
        types = btf.digest()
    except OSError:
        types = "no BTF"
    return f"{uname.release} {uname.version} {uname.machine} btf:{types}"
