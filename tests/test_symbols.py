"""The BCC-free symbolizer: /proc/PID/maps and ELF symbol tables to function names."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from elftools.elf.elffile import ELFFile

from ebpf_magic.kernel import symbols

# alpha is static (in .symtab only), beta exported (in .dynsym too); the program prints where
# both were loaded, and the first address past beta's last byte, then waits for stdin to close.
PROGRAM = r"""
#include <stdio.h>
volatile int sink;
static __attribute__((noinline)) int alpha(int x) { sink += x; return x * 3 + sink; }
__attribute__((noinline, visibility("default"))) int beta(int x) { return alpha(x) + alpha(x); }
__attribute__((noinline)) void after_beta(void) { sink++; }
int main(void) {
    printf("%p %p %p\n", (void *)alpha, (void *)beta, (void *)after_beta);
    fflush(stdout);
    getchar();
    return beta(1) & 0;
}
"""


# position-independent (file offsets are the symbols' addresses) and fixed-address (the text
# segment's addresses start at 0x400000 while its file offsets start at 0)
LINKS = {"pie": ["-fPIE", "-pie"], "no-pie": ["-fno-PIE", "-no-pie"]}


@pytest.fixture(params=list(LINKS))
def running(tmp_path, request):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the test program")
    exe = tmp_path / "two_functions"
    subprocess.run([cc, "-O1", "-g", "-rdynamic", *LINKS[request.param], "-x", "c", "-",
                    "-o", str(exe)],
                   input=PROGRAM, text=True, check=True)
    child = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        addrs = [int(a, 16) for a in child.stdout.readline().split()]
        yield child.pid, addrs, exe
    finally:
        child.stdin.close()
        child.wait(timeout=10)
        child.stdout.close()


def test_resolves_both_functions_exactly(running):
    pid, (alpha, beta, after_beta), exe = running
    with open(exe, "rb") as f:
        sizes = {s.name: s["st_size"] for s in ELFFile(f).get_section_by_name(".symtab")
                 .iter_symbols()}
    alpha_end = alpha + sizes["alpha"]
    beta_end = beta + sizes["beta"]
    names = symbols.symbolize_user(pid, [alpha, alpha + 1, alpha_end - 1, beta, beta + 4,
                                         beta_end - 1, after_beta, 0x10])
    assert names == ["alpha", "alpha", "alpha", "beta", "beta", "beta", "after_beta", None]


def test_file_symbols_are_read_once_while_unchanged(running):
    pid, (alpha, _, _), exe = running
    first = symbols.elf_symbols(str(exe))
    assert first is not None and symbols.elf_symbols(str(exe)) is first
    assert symbols.symbolize_user(pid, [alpha]) == ["alpha"]


def test_exited_process_and_non_elf_file_resolve_to_nothing(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert symbols.symbolize_user(gone.pid, [0x401000]) == [None]
    text = tmp_path / "not_elf"
    text.write_text("hello")
    assert symbols.elf_symbols(str(text)) is None
