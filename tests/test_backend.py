"""The backend registry: one Backend object per name, found by name and dialect."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from ebpf_magic import backend
from ebpf_magic.backend.base import Backend
from ebpf_magic.errors import BPFError


def test_each_registered_name_is_a_backend_of_that_name():
    for name in backend.BACKENDS:
        b = backend.get(name)
        assert isinstance(b, Backend) and b.name == name
        ok, why = b.available()
        assert ok or why  # a backend that cannot run says why


def test_an_unknown_backend_names_the_known_ones():
    with pytest.raises(BPFError, match="unknown backend 'bpftrace'") as e:
        backend.get("bpftrace")
    assert "bcc, libbpf" in e.value.hint
    with pytest.raises(BPFError, match="unknown backend"):
        backend.choose_backend("int x;", "bpftrace")


def test_dialects_choose_the_backend_and_plain_c_goes_to_the_first():
    assert backend.choose_backend('SEC("xdp") int f(void *c) { return 2; }') == "libbpf"
    assert backend.choose_backend("#include <vmlinux.h>\nint x;") == "libbpf"
    assert backend.choose_backend("BPF_HASH(c, u32);") == "bcc"
    # a BCC macro wins over a SEC(): BCC's own headers define SEC too
    assert backend.choose_backend('BPF_HASH(c, u32);\nSEC("x") int f() { return 0; }') == "bcc"
    assert backend.choose_backend("int f(void *ctx) { return 0; }") == backend.BACKENDS[0]
    assert backend.choose_backend("BPF_HASH(c, u32);", "libbpf") == "libbpf"


def test_dialect_and_function_scans_are_linear_in_blank_lines():
    """Cells of 200,000 blank lines: a scan that let ``^\\s*`` match newlines would take
    hours (quadratic); the child is stopped after 10 CPU seconds.

    Each scan must fail at every line start to be slow, so the lines after the blanks are
    ones it does not claim: plain C for the dialect scans (neither backend claims it), a
    preprocessor line for the function scan; the claimed cases follow their blanks.
    """
    script = (
        "from ebpf_magic import backend, source\n"
        "blank = '\\n' * 200_000\n"
        "plain = blank + 'int f(void *ctx) { return 0; }\\n'\n"
        "claims = [backend.get(name).claims(plain) for name in backend.BACKENDS]\n"
        "assert claims == [False] * len(backend.BACKENDS), claims\n"
        "assert backend.choose_backend(plain) == backend.BACKENDS[0]\n"
        "core = blank + '#include <vmlinux.h>\\n' + blank + 'SEC (\"tp/x\") int f(void *c)'\n"
        "assert backend.choose_backend(core) == 'libbpf'\n"
        "assert backend.choose_backend(blank + 'BPF_HASH(c, u32);' + blank) == 'bcc'\n"
        "assert source.function_names(blank + '#define X 1\\n' + blank) == []\n"
        "assert source.function_names(blank + '#include <vmlinux.h>\\n' + blank\n"
        "                             + 'int f(void *ctx) { return 0; }\\n') == ['f']\n")

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (10, 10))

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          preexec_fn=cap, timeout=120)
    assert done.returncode == 0, f"status {done.returncode}: {done.stderr[-500:]}"


def test_only_libbpf_programs_take_globals():
    with pytest.raises(BPFError, match="BCC programs have no settable globals") as e:
        backend.check_globals("bcc", {"target_pid": 1})
    assert "-D target_pid=VALUE" in e.value.hint
    backend.check_globals("libbpf", {"target_pid": 1})
    backend.check_globals("bcc", {})


def test_who_compiles_out_of_process():
    assert backend.compiles_out_of_process("bcc") and not backend.compiles_out_of_process("libbpf")
