"""What the libbpf backend runs on here: clang, the system's libbpf, the kernel's BTF."""

from __future__ import annotations

from ebpf_magic.backend.libbpf import _compile, _lib

# what this backend needs installed, for the fixes of rows that miss it
PACKAGES = "Install them: `apt-get install clang libbpf-dev` (scripts/setup.sh does)."


def available() -> tuple[bool, str]:
    """Whether this backend can run here, and why not."""
    if _compile.clang() is None:
        return False, "clang is not installed (apt-get install clang libbpf-dev)"
    try:
        _lib.lib()
    except _lib.LibbpfMissing as e:
        return False, f"libbpf.so.1 cannot be loaded ({e}); apt-get install libbpf1"
    if not _compile.BTF_PATH.exists():
        return False, "the kernel exposes no BTF (/sys/kernel/btf/vmlinux)"
    return True, ""


def version() -> str:
    """The version of the system's libbpf."""
    return _lib.version()


def compiler_version() -> str | None:
    """clang's version (``clang --version``'s first line), or None without clang."""
    cc = _compile.clang()
    return _compile.clang_version(cc) if cc else None


def describe() -> dict[str, str]:
    """What this backend uses here, in words (for the doctor): clang, libbpf, BTF, vmlinux.h."""
    cc = _compile.clang()
    try:
        libbpf = f"libbpf.so.1, version {_lib.version()}"
    except _lib.LibbpfMissing as e:
        libbpf = f"missing ({e}); apt-get install libbpf1"
    cached = _compile.cached_vmlinux()
    return {
        "clang": f"{cc}: {_compile.clang_version(cc)}" if cc else
                 "missing; apt-get install clang libbpf-dev",
        "libbpf": libbpf,
        "kernel BTF": str(_compile.BTF_PATH) if _compile.BTF_PATH.exists() else
                      "missing: the kernel has no CONFIG_DEBUG_INFO_BTF, CO-RE cannot work",
        "vmlinux.h": str(cached) if cached else "not generated yet (the first libbpf cell does)",
    }
