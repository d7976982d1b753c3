"""Compiling a cell with clang in a subprocess, against the running kernel's types.

The cell is compiled for the BPF target with ``vmlinux.h`` generated from the
kernel's BTF (``/sys/kernel/btf/vmlinux``) by bpftool. The header, and a
precompiled form of it with libbpf's helper headers, are cached by the BTF's
hash, so a cell compiles in tens of milliseconds instead of re-parsing 3 MB.

Before compiling, the source is adjusted without moving any line:

* no ``#include`` of vmlinux.h or of libbpf's headers: vmlinux.h and libbpf's
  ``bpf_helpers.h``, ``bpf_tracing.h``, ``bpf_core_read.h`` and ``bpf_endian.h`` are included
  from the command line, and the cell's includes of kernel headers
  (``<linux/...>``, ``<uapi/linux/...>``, ``<asm/...>``), whose types
  vmlinux.h holds as this kernel has them, are left out with a note;
* a legacy ``struct bpf_map_def SEC("maps") NAME = {...};`` (refused by libbpf
  1.x) becomes the BTF-defined map with the same fields, on the same lines;
* every ring buffer and perf event array ``NAME`` gets a hidden per-CPU
  counter ``__ebpf_magic_lost_NAME``, declared on the map's line, and each
  ``bpf_ringbuf_output(&NAME, ...)``/``bpf_ringbuf_reserve(&NAME, ...)``/
  ``bpf_perf_event_output(ctx, &NAME, ...)`` call counts its failures there
  (a full buffer; another CPU's perf slot), so every event is received or
  counted as lost;
* no license section: ``char LICENSE[] SEC("license") = "GPL";`` is appended.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ebpf_magic import suggest
from ebpf_magic.backend.libbpf import _headers, _lib
from ebpf_magic.errors import BPFError, CompileError
from ebpf_magic.internal import cache, files
from ebpf_magic.internal.ctext import mask_code, matching_paren
from ebpf_magic.kernel import btf

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
TIMEOUT_S = 60.0
VMLINUX_FORMAT = "-k1"  # vmlinux.h = bpftool's output + kfunc prototypes (see _headers)
LOST_PREFIX = "__ebpf_magic_lost_"  # a ring buffer's hidden loss counter: this + its name
HELPER_HEADERS = ("bpf/bpf_helpers.h", "bpf/bpf_tracing.h", "bpf/bpf_core_read.h",
                  "bpf/bpf_endian.h")
_ARCH = {"x86_64": "x86", "aarch64": "arm64", "arm64": "arm64", "s390x": "s390",
         "ppc64le": "powerpc", "riscv64": "riscv", "loongarch64": "loongarch"}
_LEGACY_MAP = re.compile(r"\bstruct\s+bpf_map_def\s+(?:SEC\s*\(\s*\"maps\"\s*\)\s*(\w+)|"
                         r"(\w+)\s+SEC\s*\(\s*\"maps\"\s*\))\s*=\s*\{(?P<body>[^}]*)\}\s*;")
_FIELD = re.compile(r"\.\s*(\w+)\s*=\s*([^,]+)")
_LEGACY_FIELDS = {"type": "type", "key_size": "key_size", "value_size": "value_size",
                  "max_entries": "max_entries", "map_flags": "map_flags"}
_OUTPUT_MAP = re.compile(r"\bstruct\s*\{[^{}]*\b__uint\s*\(\s*type\s*,\s*BPF_MAP_TYPE_"
                         r"(RINGBUF|PERF_EVENT_ARRAY)\s*\)"
                         r"[^{}]*\}\s*(\w+)\s+SEC\s*\(\s*\"\.maps\"\s*\)\s*;")
_PERF_OUTPUT = re.compile(r"\bbpf_perf_event_output\s*\(")
_LICENSE = re.compile(r"\bSEC\s*\(\s*\"license\"\s*\)")
_INCLUDE = re.compile(r"^[ \t]*#[ \t]*include[ \t]*[<\"]([^>\"]+)[>\"].*$", re.M)
# kernel headers whose types vmlinux.h (from the running kernel) already has
_KERNEL_HEADER = re.compile(r"^(?:uapi/)?(?:linux|asm|asm-generic)/[\w/.-]+\.h$")
_DIAG = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|warning|fatal "
                   r"error): (?P<msg>.*)$")
_REDEFINED = re.compile(r"error: (?:redefinition of|typedef redefinition with different types) "
                        r"'(\w+)")
MAX_ERRORS = 6
LICENSE_NOTE = ("the cell has no license section: GPL was assumed "
                "(char LICENSE[] SEC(\"license\") = \"GPL\";), as GPL-only helpers require")


@dataclass
class Compiled:
    """An object file and what was done to the source on the way."""

    obj: bytes
    source: str  # the text clang compiled
    log: str
    notes: list[str] = field(default_factory=list)  # what was assumed or left out
    lost_maps: dict[str, str] = field(default_factory=dict)  # output map -> loss counter


def target_arch() -> str:
    machine = platform.machine()
    return _ARCH.get(machine, machine)


def clang() -> str | None:
    """The clang executable (``$EBPF_MAGIC_CLANG``, else clang on PATH)."""
    return os.environ.get("EBPF_MAGIC_CLANG") or shutil.which("clang")


def bpftool() -> str | None:
    return shutil.which("bpftool") or next(
        (p for p in ("/usr/sbin/bpftool", "/sbin/bpftool") if os.path.exists(p)), None)


@dataclass
class Adjusted:
    """The source as clang compiles it (see the module doc)."""

    text: str
    notes: list[str]  # what the user should know about the changes
    include_defaults: bool  # the cell has no #include: add vmlinux.h and libbpf's headers
    lost_maps: dict[str, str]  # output map -> its hidden loss counter


def prepare(source: str) -> Adjusted:
    """Adjust ``source`` as the module doc says, keeping every line where it was."""
    code = mask_code(source)
    edits = []
    for m in _LEGACY_MAP.finditer(source):
        if code[m.start()] != "s":  # in a comment
            continue
        fields = {k: v.strip() for k, v in _FIELD.findall(source[m.start("body"):m.end("body")])}
        decl = ["struct {"]
        for key, btf_key in _LEGACY_FIELDS.items():
            if key in fields:
                decl.append(f"__uint({btf_key}, {fields[key]});")
        decl.append(f"}} {m.group(1) or m.group(2)} SEC(\".maps\");")
        text = " ".join(decl)
        # keep the line count so that diagnostics name the cell's own lines
        text += "\n" * source[m.start():m.end()].count("\n")
        edits.append((m.start(), m.end(), text))
    includes = [m for m in _INCLUDE.finditer(source) if code[m.start():m.end()].strip()]
    defaults = not any(m.group(1) == "vmlinux.h" or m.group(1).startswith("bpf/")
                       for m in includes)
    notes = []
    if defaults:
        dropped = [m for m in includes if _KERNEL_HEADER.match(m.group(1))]
        edits += [(m.start(), m.end(), "") for m in dropped]
        if dropped:
            notes.append(f"{', '.join(f'<{m.group(1)}>' for m in dropped)} left out: vmlinux.h, "
                         "generated from the running kernel, has those types")
    text = _apply(source, edits)
    text, lost_maps = _count_losses(text)
    if not any(code[m.start()] == "S" for m in _LICENSE.finditer(source)):
        text += "\nchar LICENSE[] SEC(\"license\") = \"GPL\";\n"
        notes.append(LICENSE_NOTE)
    return Adjusted(text, notes, defaults, lost_maps)


def _apply(text: str, edits: list[tuple[int, int, str]]) -> str:
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _count_losses(text: str) -> tuple[str, dict[str, str]]:
    """Give each ring buffer and perf event array a hidden per-CPU count of failed outputs.

    A submission that fails (a full buffer; for a perf array also an output to
    another CPU's slot, as flags 0 makes from every CPU but the first) is counted
    where it happened. Perf arrays are counted only when every
    ``bpf_perf_event_output`` call names its map as ``&NAME``: otherwise the
    kernel's own count of full-ring losses stands.
    """
    code = mask_code(text)
    edits, lost_maps = [], {}
    perf_edits, perf_lost, perf_calls = [], {}, 0
    for m in _OUTPUT_MAP.finditer(text):
        if code[m.start()] != "s":  # in a comment
            continue
        kind, name = m.group(1), m.group(2)
        lost = LOST_PREFIX + name
        found = [(m.end(), m.end(),
                  f" struct {{ __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __type(key, __u32); "
                  f"__type(value, __u64); __uint(max_entries, 1); }} {lost} SEC(\".maps\");")]
        count = (f"{{ __u32 __em_k = 0; __u64 *__em_v = bpf_map_lookup_elem(&{lost}, &__em_k); "
                 f"if (__em_v) (*__em_v)++; }}")
        if kind == "RINGBUF":
            calls = re.compile(rf"\b(bpf_ringbuf_output|bpf_ringbuf_reserve)\s*\(\s*&\s*"
                               rf"{re.escape(name)}\s*,")
        else:
            calls = re.compile(rf"\b(bpf_perf_event_output)\s*\([^,();]*(?:\([^()]*\)[^,();]*)?"
                               rf",\s*&\s*{re.escape(name)}\s*,")
        for c in calls.finditer(code):
            close = matching_paren(code, code.index("(", c.start()))
            if close < 0:
                continue
            call = text[c.start():close + 1]
            wrapped = (f"({{ void *__em_p = {call}; if (!__em_p) {count} __em_p; }})"
                       if c.group(1) == "bpf_ringbuf_reserve" else
                       f"({{ long __em_r = {call}; if (__em_r) {count} __em_r; }})")
            found.append((c.start(), close + 1, wrapped))
        if kind == "RINGBUF":
            edits += found
            lost_maps[name] = lost
        else:
            perf_edits += found
            perf_lost[name] = lost
            perf_calls += len(found) - 1
    if perf_calls and perf_calls == len(_PERF_OUTPUT.findall(code)):
        edits += perf_edits
        lost_maps.update(perf_lost)
    return _apply(text, edits), lost_maps


def _btf_hash() -> str:
    """The cache key of the kernel's types: its BTF's hash and how vmlinux.h is made from it."""
    return hashlib.sha256(BTF_PATH.read_bytes()).hexdigest()[:16] + VMLINUX_FORMAT


def cached_vmlinux() -> Path | None:
    """The cached vmlinux.h for the running kernel's BTF, if one was generated already."""
    if not BTF_PATH.exists():
        return None
    key = _btf_hash()
    for base in dict.fromkeys((cache.cache_dir(), cache.SYSTEM_CACHE)):
        if (base / "vmlinux" / key / "vmlinux.h").exists():  # root's cache serves all users
            return base / "vmlinux" / key / "vmlinux.h"
    return None


def clang_version(cc: str) -> str:
    """The first line of ``clang --version``."""
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return f"does not run: {e}"
    return (out.stdout.splitlines() or ["unknown version"])[0]


def vmlinux_dir() -> Path:
    """A cache directory holding ``vmlinux.h`` for the running kernel's BTF (made once)."""
    if not BTF_PATH.exists():
        raise BPFError("This kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing).",
                       "CO-RE needs a kernel built with CONFIG_DEBUG_INFO_BTF=y; use the BCC "
                       "backend (--backend bcc) with kernel headers instead.")
    cached = cached_vmlinux()
    if cached is not None:
        return cached.parent
    d = cache.cache_dir() / "vmlinux" / _btf_hash()
    header = d / "vmlinux.h"
    tool = bpftool()
    if tool is None:
        raise BPFError("bpftool is needed to generate vmlinux.h and was not found.",
                       "Install it: apt-get install bpftool")
    # readable by every user: the kernel may run as another
    files.make_dirs(d, 0o755, levels=3)  # d, vmlinux/ and the cache
    out = subprocess.run([tool, "btf", "dump", "file", str(BTF_PATH), "format", "c"],
                         capture_output=True, timeout=TIMEOUT_S)
    if out.returncode != 0:
        raise BPFError("bpftool could not turn the kernel's BTF into vmlinux.h: "
                       + out.stderr.decode(errors="replace").strip()[-500:])
    files.write(header, _headers.with_kfuncs(out.stdout, btf.vmlinux(str(BTF_PATH))))
    return d


def _base_flags(vmlinux: Path) -> list[str]:
    # include/ first: its bpf/*.h add to libbpf's installed headers what newer releases have
    flags = ["-g", "-O2", "-target", "bpf", f"-D__TARGET_ARCH_{target_arch()}",
             "-I", str(_headers.INCLUDE_DIR), "-I", str(vmlinux), "-fno-color-diagnostics",
             "-ferror-limit=20"]
    # the BPF target has no system include directory of its own: <linux/bpf.h> needs the
    # host's <asm/...> (Debian keeps them in /usr/include/<multiarch>)
    multiarch = Path(f"/usr/include/{platform.machine()}-linux-gnu")
    return flags + (["-idirafter", str(multiarch)] if multiarch.is_dir() else [])


def precompiled(vmlinux: Path, cc: str) -> Path | None:
    """vmlinux.h and libbpf's helper headers, precompiled; None if that cannot be done."""
    try:
        return _precompiled(vmlinux, cc)
    except (OSError, subprocess.SubprocessError):  # a cache this user may only read
        return None


def _precompiled(vmlinux: Path, cc: str) -> Path | None:
    text = "".join(f'#include "{x}"\n' if x == "vmlinux.h" else f"#include <{x}>\n"
                   for x in ("vmlinux.h", *HELPER_HEADERS))
    key = hashlib.sha256("\0".join([cc, *_base_flags(vmlinux), text]).encode()).hexdigest()[:8]
    pch = vmlinux / f"defaults-{key}.pch"
    if pch.exists():
        return pch
    h = vmlinux / f"defaults-{key}.h"  # the precompiled header names it: it stays beside it
    if not h.exists():
        files.write(h, text)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "defaults.pch"
        done = subprocess.run([cc, *_base_flags(vmlinux), "-x", "c-header", str(h), "-o",
                               str(out)], capture_output=True, timeout=TIMEOUT_S)
        if done.returncode != 0:
            return None
        files.write(pch, out.read_bytes())
    return pch


def compile_cell(source: str, cflags: list[str], filename: str = "cell",
                 line_offset: int = 0, use_pch: bool = True) -> Compiled:
    """Compile ``source`` to a BPF object; raise CompileError naming the cell's lines.

    ``use_pch=False`` parses the default headers as text instead of using the
    precompiled header (for comparison; both give the same object).
    """
    cc = clang()
    if cc is None:
        raise CompileError("clang is needed to compile libbpf programs and was not found.",
                           "Install it: apt-get install clang libbpf-dev")
    adjusted = prepare(source)
    text, defaults = adjusted.text, adjusted.include_defaults
    vmlinux = vmlinux_dir()
    pch = precompiled(vmlinux, cc) if defaults and use_pch else None
    with tempfile.TemporaryDirectory(prefix="ebpf_magic-") as tmp:
        c_file = Path(tmp) / f"{filename}.c"
        o_file = Path(tmp) / f"{filename}.o"
        c_file.write_text(text)
        attempts = []
        if pch is not None:
            attempts.append(["-include-pch", str(pch)])
        as_text = ([a for x in ("vmlinux.h", *HELPER_HEADERS) for a in ("-include", x)]
                   if defaults else [])
        attempts.append(as_text)
        for extra in attempts:
            done, log = _clang([cc, *_base_flags(vmlinux), *extra, *cflags, "-c", str(c_file),
                                "-o", str(o_file)], tmp)
            if done.returncode == 0 or not ("precompiled header" in log or "AST file" in log):
                break
            if pch is not None and "modified since the precompiled header" in log:
                with contextlib.suppress(OSError):  # headers were updated: build it again next time
                    pch.unlink()
        clash = _kfunc_clash(log, vmlinux) if done.returncode != 0 else None
        if clash:  # the cell declares a kfunc its own way: compile without vmlinux.h's prototypes
            done, log = _clang([cc, *_base_flags(vmlinux), f"-D{_headers.NO_KFUNCS}", *as_text,
                                *cflags, "-c", str(c_file), "-o", str(o_file)], tmp)
            if done.returncode == 0:
                adjusted.notes.append(
                    f"the cell declares kfunc {clash}() unlike this kernel's BTF does, so "
                    f"vmlinux.h's kfunc prototypes were left out ({_headers.NO_KFUNCS})")
        if done.returncode != 0:
            undefined = _undefined(macro_like_names(text),
                                   [cc, *_base_flags(vmlinux), *as_text, *cflags, "-c",
                                    str(c_file)], tmp)
            raise _failure(done.returncode, log, text, c_file.name, filename, line_offset,
                           undefined)
        return Compiled(o_file.read_bytes(), text, log, adjusted.notes, adjusted.lost_maps)


def _clang(cmd: list[str], cwd: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run clang; its result and its diagnostics as text. CompileError if it takes too long."""
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT_S, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise CompileError(f"clang did not finish within {TIMEOUT_S:.0f} s.",
                           "Simplify the program (large unrolled loops?).") from None
    return done, done.stderr.decode("utf-8", "replace")


_CONFLICT = re.compile(r"error: conflicting types for '(\w+)'")


def _kfunc_clash(log: str, vmlinux: Path) -> str | None:
    """The kfunc the cell declares with other types than vmlinux.h's prototype, if any."""
    names = [m.group(1) for m in _CONFLICT.finditer(log)]
    if not names:
        return None
    declared = _headers.declared_kfuncs(vmlinux / "vmlinux.h")
    return next((n for n in names if n in declared), None)


def _failure(rc: int, log: str, text: str, c_name: str, filename: str,
             line_offset: int, undefined: Sequence[str] = ()) -> CompileError:
    diags = format_diagnostics(log, text, c_name, filename, line_offset)
    if rc < 0 or "PLEASE submit a bug report" in log or "Stack dump" in log:
        how = f" ({signal.Signals(-rc).name})" if -rc in set(signal.Signals) else ""
        where = next((d for d in diags if d.startswith(f"{filename}, line")), "")
        return CompileError(f"clang crashed compiling the cell{how}" +
                            (f": {where}" if where else "."),
                            "A compiler failure, not an error in the C as written: code the BPF "
                            "back end cannot lower (128-bit arithmetic, a large struct by value) "
                            "or a compiler limit (an extremely long expression) causes it. "
                            "Simplify that code.", diagnostics=diags)
    if not diags:
        diags = [ln for ln in log.splitlines() if "error" in ln][:10]
    hint = _hint(diags, filename, log, undefined)
    errors = [d for d in diags if not d.startswith("    ")]
    shown = diags
    if len(errors) > MAX_ERRORS:  # the first errors are the ones to fix; the rest often follow
        cut = diags.index(errors[MAX_ERRORS])
        shown = diags[:cut] + [f"... and {len(errors) - MAX_ERRORS} more errors"]
    message = ("The C code did not compile:\n" + "\n".join(shown) if diags
               else "The C code did not compile (clang printed nothing).")
    return CompileError(message, hint, diagnostics=diags)


def _hint(diags: list[str], filename: str, log: str = "",
          undefined: Sequence[str] = ()) -> str:
    """What to do about the errors clang reported, where a common cause is recognisable."""
    construct = suggest.unsupported_construct("\n".join(diags))
    if construct:
        return construct[0].upper() + construct[1:]
    macro = _undefined_macro(list(undefined))
    if macro:
        return macro
    redefined = [(d, m.group(1)) for d in diags if (m := _REDEFINED.search(d))]
    if any(not d.startswith(f"{filename}, ") for d, _ in redefined):
        return ('vmlinux.h and the kernel\'s <linux/...> headers define the same types: '
                'include "vmlinux.h" (this kernel\'s types) and not the others.')
    earlier = {Path(m.group(1)).name for m in _PREVIOUS.finditer(log)}
    if redefined and "vmlinux.h" in earlier:
        return (f"The kernel's own types (vmlinux.h) already define {redefined[0][1]!r}; "
                "rename yours.")
    if redefined:
        return f"{redefined[0][1]!r} is defined twice in the cell; remove or rename one."
    if any("file not found" in d for d in diags):
        return ('Kernel types come from "vmlinux.h" (generated from this kernel) and libbpf\'s '
                "helpers from <bpf/bpf_helpers.h>, <bpf/bpf_tracing.h>, <bpf/bpf_core_read.h>; "
                "a cell without any #include gets all of these.")
    return ""


_PREVIOUS = re.compile(r"^([^:\n]+):\d+:\d+: note: previous (?:definition|declaration) is here",
                       re.M)
# a function defined through a macro, as libbpf's BPF_KPROBE(name, args...) defines one
_MACRO_DEFINITION = re.compile(r"^[ \t]*(?:SEC\s*\(\s*\"[^\"]*\"\s*\)\s*)?(?:static\s+)?"
                               r"(?:__always_inline\s+)?(?:int|long|void|__u32|u32|__u64|u64|bool|"
                               r"__s32|s32)\s+([A-Za-z_]\w*)\s*\(", re.M)
_DEFINE = re.compile(r"^#define (\w+)", re.M)


def macro_like_names(text: str) -> list[str]:
    """Names that ``text`` uses as function-defining macros (``int BPF_UPROBE(name, ...)``)."""
    code = mask_code(text)
    names = [m.group(1) for m in _MACRO_DEFINITION.finditer(code)]
    return list(dict.fromkeys(n for n in names if n in _headers.NEWER_LIBBPF_MACROS
                              or re.fullmatch(r"[A-Z][A-Z0-9]*_[A-Z0-9_]+", n)))


def _undefined(names: list[str], cmd: list[str], cwd: str) -> list[str]:
    """Those of ``names`` that no header or line of the cell defines, by clang's preprocessor.

    ``cmd`` is the compile command; its output options are replaced by ``-E -dM``.
    """
    if not names:
        return []
    cut = cmd.index("-c")
    done, _ = _clang([*cmd[:cut], "-E", "-dM", cmd[cut + 1]], cwd)
    if done.returncode != 0:
        return []
    defined = set(_DEFINE.findall(done.stdout.decode("utf-8", "replace")))
    return [n for n in names if n not in defined]


def _undefined_macro(undefined: list[str]) -> str:
    """A hint for a cell that defines functions through macros nothing defines.

    Without its definition ``int BPF_UPROBE(name)`` declares a function called
    BPF_UPROBE, so clang reports redefinitions and odd parameter lists instead.
    """
    known = [n for n in undefined if n in _headers.NEWER_LIBBPF_MACROS]
    if known:
        return (f"{known[0]} is a macro of newer libbpf releases; the installed libbpf's headers "
                f"({_installed_libbpf()}) do not define it and ebpf_magic does not supply it. "
                "Define it in the cell, or install a newer libbpf-dev.")
    if undefined:
        return (f"Nothing defines {undefined[0]}, which the cell uses like a macro that defines a "
                "function (as libbpf's BPF_KPROBE or BPF_PROG do): check its spelling, or "
                "include the header that defines it.")
    return ""


def _installed_libbpf() -> str:
    try:
        return "libbpf " + _lib.version()
    except _lib.LibbpfMissing:
        return "libbpf"


def format_diagnostics(log: str, text: str, c_name: str, filename: str,
                       line_offset: int = 0) -> list[str]:
    """clang's errors as ``filename, line N: error: ...`` with the offending line.

    The adjusted text keeps every line of the cell in place, so clang's line
    numbers in the cell's file are the cell's own; diagnostics inside headers
    are reported as clang wrote them.
    """
    lines = text.splitlines()
    out: list[str] = []
    for line in log.splitlines():
        m = _DIAG.match(line)
        if not m or m.group("sev") == "warning":
            continue
        if Path(m.group("file")).name != c_name:
            out.append(line)
            continue
        n = int(m.group("line"))
        out.append(f"{filename}, line {n + line_offset}: {m.group('sev')}: {m.group('msg')}")
        if 1 <= n <= len(lines):
            out.append(f"    {lines[n - 1].strip()}")
    return out
