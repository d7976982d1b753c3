"""Kernel headers for compiling BPF C at run time.

The running kernel's own headers are used when they exist (``/lib/modules/
<release>/build``, or the kernel's built-in ``/sys/kernel/kheaders.tar.xz``
which BCC unpacks itself). On a kernel the distribution ships no headers for,
the nearest installed distribution headers are merged into one directory (a
symlink tree of the ``-common`` directory overlaid with the arch directory, the
shape ``/lib/modules/*/build`` has on Debian) and named to BCC through
``BCC_KERNEL_SOURCE``. Root builds it in :data:`.cache.SYSTEM_CACHE`, readable by
every user (the eBPF kernel runs as an unprivileged one); another user uses that tree
when it is there and otherwise builds one in their own cache. Struct layouts of kernel-internal
types may then differ from the running kernel. Where the kernel has BTF, BCC compiles
instead against a tree holding the kernel's own types and those headers' macros
(:mod:`.btftypes`), so its reads of kernel structs are right; the distribution tree
stays the fallback for a program that does not compile so, with a warning.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from ebpf_magic.backend.base import KERNEL_HEADERS, Note
from ebpf_magic.backend.bcc import btftypes
from ebpf_magic.internal import cache, files

SRC_ROOT = Path("/usr/src")
STAMP = ".ebpf_magic_complete"
# Compile against the kernel's BTF types where its headers are missing (see .btftypes);
# False keeps the nearest distribution headers.
USE_BTF = True
BTF_SOURCE = "kernel BTF"


@dataclass(frozen=True)
class Headers:
    """Which headers BCC compiles against."""

    path: Path | None
    # "running kernel", "kheaders", "kernel BTF", "nearest distro headers", "BCC_KERNEL_SOURCE"
    source: str
    release: str = ""  # the headers' release (for "kernel BTF": of the macros' headers)
    exact: bool = True
    fallback: Path | None = None  # for "kernel BTF": the distribution tree behind it
    why_not_btf: str = ""  # for "nearest distro headers": why the kernel's BTF is not used

    @property
    def btf_note(self) -> str:
        """What compiling against a "kernel BTF" tree means, in words."""
        return (f"Kernel headers for {platform.release()} are not installed; BCC compiles "
                f"against this kernel's own types, from its BTF, with the macros of the "
                f"{self.release} headers ({self.path}): kernel-internal structs are read "
                f"right, constants defined as macros are {self.release}'s. A program that "
                f"does not compile so falls back to those headers, with a warning.")

    def distro(self) -> Headers:
        """The distribution headers a "kernel BTF" tree falls back to."""
        return Headers(self.fallback, "nearest distro headers", self.release, exact=False)

    @property
    def warning(self) -> Note:
        """What compiling against another release's headers means, as a note a session shows
        once (empty where the headers are this kernel's)."""
        if self.exact or self.path is None:
            return Note("")
        return Note(f"Kernel headers for {platform.release()} are not installed; compiling "
                    f"against {self.release} headers ({self.path}). Tracepoint arguments, "
                    "helpers, maps and events are unaffected, but layouts of kernel-internal "
                    "structs may differ: reads of kernel structs (task_struct, sock, ...) can be "
                    "wrong.", kind=KERNEL_HEADERS, key="kernel headers",
                    brief=f"BCC compiles against {self.release} kernel headers, not "
                          f"{platform.release()}'s, so its reads of kernel structs may be off",
                    see="Kernel headers")


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", release)[:4])


def installed_header_dirs() -> list[tuple[str, Path, Path | None]]:
    """(release, arch directory, common directory) of each installed header set."""
    found = []
    if not SRC_ROOT.is_dir():
        return found
    for arch_dir in SRC_ROOT.glob("linux-headers-*"):
        name = arch_dir.name[len("linux-headers-"):]
        if name.endswith("-common") or not (arch_dir / "include").is_dir():
            continue
        release = name
        common = None
        flavour = name.rsplit("-", 1)
        if len(flavour) == 2:
            candidate = SRC_ROOT / f"linux-headers-{flavour[0]}-common"
            if candidate.is_dir():
                common = candidate
        found.append((release, arch_dir, common))
    return found


def nearest(release: str) -> tuple[str, Path, Path | None] | None:
    """The installed header set whose version is closest to ``release``."""
    want = _version_key(release)
    sets = installed_header_dirs()
    if not sets:
        return None

    def distance(entry: tuple[str, Path, Path | None]) -> tuple[int, tuple[int, ...]]:
        have = _version_key(entry[0])
        return (abs(have[0] - want[0]) * 1000 + abs(have[1] - want[1]) if len(have) > 1
                and len(want) > 1 else 10**6, tuple(-x for x in have))
    return min(sets, key=distance)


def merged_tree(arch: Path, common: Path | None) -> Path:
    """A symlink tree of ``common`` overlaid with ``arch``, built once.

    A complete tree in this process's cache or in :data:`.cache.SYSTEM_CACHE` is
    used as it is (where nobody else could have written it, :func:`.cache.trusted`);
    otherwise one is built in :func:`.cache.cache_dir`, readable by all users.
    """
    target = cache.cache_dir() / "headers" / arch.name
    for built in (target, cache.SYSTEM_CACHE / "headers" / arch.name):
        if (built / STAMP).exists() and cache.trusted(built):
            return built
    # made only below a directory no one else may write; the eBPF kernel's user must reach
    # root's tree
    cache.make_dirs(target.parent)
    files.make_dirs(target.parent, 0o755, levels=2 if os.geteuid() == 0 else 0)

    def build(tmp: Path) -> None:
        for layer in [d for d in (common, arch) if d is not None]:
            _link_tree(layer, tmp)
        (tmp / STAMP).write_text(f"{common}\n{arch}\n")  # inside a private new directory

    return files.replace_dir(target, build)


def _link_tree(src: Path, dst: Path) -> None:
    for root, dirs, names in os.walk(src, followlinks=False):
        out = dst / os.path.relpath(root, src)
        out.mkdir(parents=True, exist_ok=True)
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            link = out / name
            if link.is_symlink() or link.exists():
                link.unlink()
            source = os.path.join(root, name)
            link.symlink_to(os.path.realpath(source) if os.path.islink(source) else source)


def find(release: str | None = None) -> Headers:
    """Decide which headers to use for ``release`` (default: the running kernel)."""
    release = release or platform.release()
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        return Headers(Path(env), "BCC_KERNEL_SOURCE", release, exact=True)
    build = Path("/lib/modules") / release / "build"
    if (build / "include").is_dir():
        return Headers(build, "running kernel", release)
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return Headers(Path("/sys/kernel/kheaders.tar.xz"), "kheaders", release)
    near = nearest(release)
    if near is None:
        return Headers(None, "missing", release, exact=False)
    near_release, arch, common = near
    distro = merged_tree(arch, common)
    why = "turned off (headers.USE_BTF)"
    if USE_BTF:
        try:
            return Headers(btftypes.tree(distro), BTF_SOURCE, near_release, fallback=distro)
        except (btftypes.Unavailable, OSError) as e:
            why = str(e)
    return Headers(distro, "nearest distro headers", near_release, exact=False,
                   why_not_btf=why)


def matching_tree() -> Path | None:
    """A header directory whose types are the running kernel's (its own headers, or the tree
    made from its BTF), or None."""
    found = find()
    exact = found.source in ("running kernel", BTF_SOURCE, "BCC_KERNEL_SOURCE")
    return found.path if exact and found.path is not None and found.path.is_dir() else None


def ensure(release: str | None = None) -> Headers:
    """Find headers and make BCC use them; the result says whether they are exact."""
    ours = os.environ.get("EBPF_MAGIC_HEADERS")
    if ours and os.environ.get("BCC_KERNEL_SOURCE") == ours.split("\n")[1]:
        # the variable is ours: say what it names, a mismatch included
        source, path, used, fallback, why = ours.split("\n")
        if USE_BTF == (source == BTF_SOURCE):
            return Headers(Path(path), source, used, exact=source == BTF_SOURCE,
                           fallback=Path(fallback) if fallback else None, why_not_btf=why)
        del os.environ["BCC_KERNEL_SOURCE"]  # USE_BTF changed since: decide again
    headers = find(release)
    if headers.source in ("nearest distro headers", BTF_SOURCE):
        os.environ["BCC_KERNEL_SOURCE"] = str(headers.path)
        os.environ["EBPF_MAGIC_HEADERS"] = "\n".join(
            [headers.source, str(headers.path), headers.release,
             str(headers.fallback or ""), headers.why_not_btf])
    return headers


def install_hint() -> str:
    """How to install kernel headers here."""
    return ("Install kernel headers: on Debian/Ubuntu `sudo apt-get install "
            f"linux-headers-{platform.release()}` (or `linux-headers-amd64`/"
            "`linux-headers-generic` when the running kernel has none), on Fedora "
            "`sudo dnf install kernel-devel`. Or point BCC_KERNEL_SOURCE at a kernel source tree.")
