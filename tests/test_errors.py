"""Every error a user can provoke says what happened and what to do, with no traceback."""

import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from ebpf_magic import (
    AttachError,
    BPFError,
    CompileError,
    HeadersMissingError,
    Program,
    VerifierError,
)

from conftest import bpftool_json, own_bpf_fds

pytestmark = pytest.mark.kernel


def shown(shell, cell, capsys) -> str:
    """What the notebook shows for a failing cell (the cell must fail)."""
    result = shell.run_cell(cell)
    assert not result.success
    out = capsys.readouterr()
    return out.out + out.err


def test_compile_error_names_cell_line(shell, capsys):
    text = shown(shell, "%%bpf p\nBPF_HASH(m, u32, u64);\n\nint f(void *ctx) {\n"
                        "    return undefined_thing;\n}\n", capsys)
    assert "CompileError" in text
    assert "cell, line 5: error: use of undeclared identifier 'undefined_thing'" in text
    assert "return undefined_thing;" in text
    assert "Traceback" not in text and "File \"" not in text


def test_compile_error_after_tracepoint_macro_keeps_cell_lines():
    src = "TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {\n  int x = ;\n  return 0;\n}\n"
    with pytest.raises(CompileError) as info:
        Program(src)
    assert info.value.diagnostics[0] == "cell, line 2: error: expected expression"


def test_verifier_rejection_shows_log_tail():
    src = "int f(void *ctx) { int *p = 0; return *p; }"
    with pytest.raises(VerifierError) as info:
        Program(src, attach=["tracepoint:syscalls:sys_enter_getppid"])
    text = str(info.value)
    assert "verifier rejected f()" in text
    reason = info.value.log.strip().splitlines()[-2]  # the last line counts instructions
    assert reason.startswith("R0 ")  # "R0 !read_ok" or "R0 invalid mem access ..."
    assert text.splitlines()[-2] == "    " + reason  # the message ends with it, above the hint
    assert len(text.splitlines()) < 25


KERNEL_ADDRESS = re.compile(r"0x[fF]{4}[0-9a-fA-F]{12}")


def assert_no_kernel_address(error: VerifierError) -> None:
    """The log loads a map's address (shown to root and CAP_SYSLOG); the message hides it."""
    [loaded] = [ln for ln in error.log.splitlines() if re.search(r"\(18\) r1 = 0x", ln)]
    assert KERNEL_ADDRESS.search(loaded), loaded
    assert not KERNEL_ADDRESS.search(str(error))
    assert "r1 = <kernel address>" in error.message


def test_verifier_hint_fits_null_pointer_and_names_cell_lines():
    src = "BPF_HASH(a, int, u64);\nint f(void *ctx) { int k = 0; u64 *v = a.lookup(&k);\n" \
          "  return *v; }"
    with pytest.raises(VerifierError) as info:
        Program(src, attach=["tracepoint:syscalls:sys_enter_getppid"], line_offset=1)
    assert "; return *v; } @ cell, line 4" in info.value.message
    assert "main.c" not in info.value.message
    assert_no_kernel_address(info.value)
    assert info.value.hint == ("A map lookup can return NULL: check the pointer (if (!v) return "
                               "0;) before reading or writing through it.")


def test_verifier_hint_fits_out_of_bounds_map_value():
    src = "BPF_ARRAY(a, u64, 4);\nint f(void *ctx) { int k = 0; u64 *v = a.lookup(&k);\n" \
          "  if (!v) return 0; return *(v + 10); }"
    with pytest.raises(VerifierError) as info:
        Program(src, attach=["tracepoint:syscalls:sys_enter_getppid"])
    assert "invalid access to map value, value_size=8 off=80 size=8" in info.value.message
    assert info.value.hint.startswith("An access past the end of a map value")


def test_unknown_helper_is_named_with_near_helpers():
    with pytest.raises(CompileError) as info:
        Program("int f(void *ctx) {\n  u32 p = bpf_get_current_pid();\n  return p; }",
                attach=["tracepoint:syscalls:sys_enter_getppid"])
    lines = info.value.message.splitlines()
    assert lines[0] == ("bpf_get_current_pid() is not a BPF helper (nothing declares it). Did "
                        "you mean: bpf_get_current_pid_tgid, bpf_get_current_cgroup_id, "
                        "bpf_get_current_uid_gid?")
    assert lines[1].startswith("cell, line 2: ")
    assert "too large" not in str(info.value)


def test_128_bit_multiply_is_named_in_plain_words():
    src = ("int f(void *ctx) { unsigned __int128 a = bpf_ktime_get_ns(); a = a * a;\n"
           "  return (int)(a >> 70); }")
    with pytest.raises(CompileError) as info:
        Program(src, attach=["tracepoint:syscalls:sys_enter_getppid"])
    assert info.value.hint.startswith("A 128-bit multiply is not supported by the BPF backend: "
                                      "use 64-bit (or narrower) types")


@pytest.fixture(scope="module")
def kprobes() -> bool:
    """Whether kprobes attach here, as the doctor learned by attaching one."""
    from ebpf_magic.setup import doctor

    return doctor.run().status("kprobe") == "ok"


def test_kprobe_without_kprobes_suggests_tracepoint(shell, capsys, kprobes):
    cell = "%%bpf p -a kprobe:__x64_sys_openat\nint f(void *ctx) { return 0; }"
    if kprobes:
        assert shell.run_cell(cell).success
        assert "p: attached kprobe:__x64_sys_openat=f" in capsys.readouterr().out
        shell.run_line_magic("bpf", "stop p")
        return
    text = shown(shell, cell, capsys)
    assert "cannot attach kprobe:__x64_sys_openat=f" in text
    assert "without kprobes" in text
    assert "tracepoint:syscalls:sys_enter_openat" in text


def test_missing_tracepoint_suggests_near_names():
    with pytest.raises(AttachError) as info:
        Program("int f(void *ctx) { return 0; }",
                attach=["tracepoint:syscalls:sys_enter_wirte"])
    assert "syscalls:sys_enter_write" in info.value.hint


def test_uprobe_missing_symbol():
    with pytest.raises(AttachError) as info:
        Program("int f(void *ctx) { return 0; }", attach=["uprobe:c:no_such_function_xyz"])
    assert "no_such_function_xyz" in str(info.value)


def test_hardware_counters_explained():
    from ebpf_magic.setup import doctor

    src = "int f(void *ctx) { return 0; }"
    if doctor.run().status("hardware counters") == "ok":  # as the doctor learned by trying
        Program(src, attach=["hardware:cycles:100000"]).stop()
        return
    with pytest.raises(AttachError) as info:
        Program(src, attach=["hardware:cycles:100000"])
    assert "Hardware counters are not available" in info.value.hint
    assert "software:cpu-clock" in info.value.hint


def test_failed_cell_leaves_nothing_attached(shell, capsys, no_leaks):
    def ours() -> set[int]:
        """This cell's programs still loaded (other tests may load theirs meanwhile), after
        the kernel's deferred release of closed ones."""
        deadline = time.monotonic() + 2
        while True:
            ids = {p["id"] for p in bpftool_json("prog", "show") if p.get("name") == "errtest_a"}
            if not ids or time.monotonic() > deadline:
                return ids
            time.sleep(0.05)

    # the tracepoint attaches first, then the raw tracepoint fails: the tracepoint must be
    # detached
    cell = ("%%bpf p -a tracepoint:syscalls:sys_enter_getppid=errtest_a "
            "-a rawtracepoint:no_such_tp_xyz=b\n"
            "BPF_ARRAY(n, u64, 1);\n"
            "int errtest_a(void *ctx) { int z = 0; n.increment(z); return 0; }\n"
            "int b(void *ctx) { return 0; }\n")
    assert ours() == set()
    text = shown(shell, cell, capsys)
    assert "cannot attach rawtracepoint:no_such_tp_xyz=b" in text
    assert ours() == set()
    assert "p" not in shell.user_ns
    assert shell.run_line_magic("bpf", "list").empty


def test_failed_cell_keeps_other_programs(shell, capsys):
    ok = ("%%bpf good -a tracepoint:syscalls:sys_enter_getppid -D PID=" + str(os.getpid()) +
          "\nBPF_ARRAY(n, u64, 1);\nint a(void *ctx) {\n"
          "  if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;\n"
          "  int z = 0; n.increment(z); return 0; }\n")
    assert shell.run_cell(ok).success
    shown(shell, "%%bpf bad\nint f(void *ctx) { return nope; }", capsys)
    os.getppid()
    assert shell.user_ns["good"].maps["n"][0] == 1
    assert list(shell.run_line_magic("bpf", "list")["name"]) == ["good"]


def test_bad_attach_spec_is_clear(shell, capsys):
    text = shown(shell, "%%bpf p -a tracepoint:oops\nint f(void *ctx) { return 0; }", capsys)
    assert "does not have the form of a tracepoint probe" in text
    assert "tracepoint:CATEGORY:NAME" in text


def test_ambiguous_function_lists_candidates(shell, capsys):
    text = shown(shell, "%%bpf p -a tracepoint:syscalls:sys_enter_getppid\n"
                        "int one(void *c) { return 0; }\nint two(void *c) { return 0; }\n", capsys)
    assert "Candidates: one, two" in text
    assert "tracepoint:syscalls:sys_enter_getppid=FUNCTION" in text


def test_headers_missing(monkeypatch, tmp_path):
    empty = tmp_path / "headers"
    (empty / "include").mkdir(parents=True)
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(empty))
    monkeypatch.delenv("EBPF_MAGIC_HEADERS_RELEASE", raising=False)
    with pytest.raises(HeadersMissingError) as info:
        Program("#include <linux/sched.h>\nint f(void *ctx) { return 0; }")
    assert "apt-get install linux-headers" in str(info.value)


def _isolated(code: str, *prefix: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": "/tmp"})


def test_not_privileged_says_how_to_get_rights():
    code = """
        from IPython.core.interactiveshell import InteractiveShell
        sh = InteractiveShell.instance()
        sh.run_line_magic("load_ext", "ebpf_magic")
        r = sh.run_cell("%%bpf p -a tracepoint:syscalls:sys_enter_getppid\\n"
                        "BPF_ARRAY(n, u64, 1);\\nint f(void *c) { return 0; }")
        print("SUCCESS" if r.success else "FAILED")
    """
    r = _isolated(code, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                  "--inh-caps=-all", "--bounding-set=-all")
    text = r.stdout + r.stderr
    assert "FAILED" in text, text
    assert "NotPrivilegedError" in text
    assert "CAP_BPF" in text and "install-kernel" in text
    assert "Traceback" not in text


def test_bcc_missing_names_package():
    code = """
        import sys
        sys.modules["bcc"] = None
        from ebpf_magic.backend.bcc import locate
        locate._SEARCH.clear()
        from IPython.core.interactiveshell import InteractiveShell
        sh = InteractiveShell.instance()
        sh.run_line_magic("load_ext", "ebpf_magic")
        sh.run_cell("%%bpf p\\nint f(void *c) { return 0; }")
    """
    r = _isolated(code)
    text = r.stdout + r.stderr
    assert "BCC's Python package was not found" in text
    assert "python3-bpfcc" in text
    assert "Traceback" not in text


def test_no_fds_left_after_errors(no_leaks):
    for src, attach, error in [("int f(void *c) { return x; }", [], CompileError),
                               ("int f(void *c) { int *p = 0; return *p; }",
                                ["tracepoint:syscalls:sys_enter_getppid"], VerifierError),
                               ("int f(void *c) { return 0; }", ["rawtracepoint:no_such_tp_xyz"],
                                AttachError)]:
        with pytest.raises(error):
            Program(src, attach=attach)
    assert own_bpf_fds() == []


def test_reading_a_stopped_program_says_when_it_stopped(shell, capsys, no_leaks):
    cell = ("%%bpf p -a tracepoint:syscalls:sys_enter_getppid\nBPF_HASH(m, u32, u64);\n"
            "int f(void *c) { u32 k = 1; m.increment(k); return 0; }\n")
    assert shell.run_cell(cell).success
    shell.run_line_magic("bpf", "stop p")
    stopped = time.strftime("%H:%M:%S", time.localtime(shell.user_ns["p"].stopped_at))
    capsys.readouterr()
    for read in ('p.maps["m"].df', 'p.maps["m"][1]', 'len(p.maps["m"])'):
        text = shown(shell, read, capsys)
        assert text.splitlines()[0].endswith(f"\x1b[0m: program 'p' was stopped at {stopped}; "
                                             "re-run its cell"), read
        assert "Traceback" not in text and "Errno" not in text


def test_raw_tracepoint_refused_does_not_suggest_its_own_name():
    src = "int f(struct bpf_raw_tracepoint_args *ctx) { return ctx->args[7] != 0; }"
    with pytest.raises(AttachError) as info:
        Program(src, attach=["rawtracepoint:sched_switch"])  # it passes 4 arguments
    assert info.value.message.endswith("Invalid argument")
    assert info.value.hint.startswith("sched_switch is a raw tracepoint of this kernel, and the "
                                      "kernel refused this program for it")
    assert "Did you mean" not in info.value.hint


def test_missing_raw_tracepoint_suggests_real_ones_only():
    from ebpf_magic import suggest

    src = "int f(struct bpf_raw_tracepoint_args *ctx) { return 0; }"
    with pytest.raises(AttachError) as info:
        Program(src, attach=["rawtracepoint:sys_enter_wrte"])
    hint = info.value.hint
    assert hint.startswith("No raw tracepoint 'sys_enter_wrte'")
    close = hint.split("Did you mean: ")[1].rstrip("?").split(", ")
    assert "sys_enter" in close
    assert set(close) <= set(suggest.raw_tracepoints())
    assert "sys_enter_write" not in close  # a tracefs event, not a raw tracepoint


def test_args_in_a_function_attached_by_option_explains_how_to_get_them(shell, capsys):
    text = shown(shell, "%%bpf p -a tracepoint:syscalls:sys_enter_write\n"
                        "int f(void *ctx) { return args->fd; }", capsys)
    assert "cell, line 2: error: use of undeclared identifier 'args'" in text
    assert ("`args` exists only inside TRACEPOINT_PROBE(category, event) { ... }, which "
            "attaches itself") in text


def test_unsubstituted_names_are_named(shell, capsys):
    shell.user_ns.pop("threshold", None)
    text = shown(shell, "%%bpf p -a tracepoint:syscalls:sys_enter_getppid\n"
                        "int f(void *ctx) { return {threshold} + $limit; }", capsys)
    assert ("Not substituted, as no notebook variable has the name: threshold, limit. Define "
            "the variable before running the cell") in text


def test_empty_struct_compiles_without_a_hidden_type_map(no_leaks):
    src = ("struct stub {};\ntypedef struct { /* nothing yet */ } empty_t;\n"
           "struct one { u32 x; };\nBPF_HASH(m, u32, struct one);\n"
           "int f(void *ctx) { return 0; }")
    with Program(src, attach=["tracepoint:syscalls:sys_enter_getppid"]) as p:
        assert list(p.maps) == ["m"]
        assert p.maps["m"].value_type == "struct {u32 x}"


def test_errors_inside_headers_are_shown_at_the_including_cell_line(monkeypatch):
    from ebpf_magic.backend.bcc import headers

    monkeypatch.setattr(headers, "USE_BTF", False)  # real header files, which the error is in
    src = ("#define hlist_node 1\n#include <net/sock.h>\n"
           "int f(struct pt_regs *ctx, struct sock *sk) { return sk->sk_state; }\n")
    with pytest.raises(CompileError) as info:
        Program(src, line_offset=1)
    first, quoted = info.value.diagnostics[:2]
    assert first.startswith("cell, line 3 (in include/linux/list.h:")
    assert first.endswith("): error: declaration of anonymous struct must be a definition")
    assert quoted == "    #include <net/sock.h>"


def test_errors_on_lines_bcc_rewrote_map_to_the_nearest_cell_line():
    from ebpf_magic.backend.bcc.diagnostics import format_diagnostics

    cell = ("#include <linux/tcp.h>\nint f(struct pt_regs *ctx, struct sock *sk) {\n"
            "    struct tcp_sock *ts = tcp_sk(sk);\n    return ts->srtt_us;\n}\n")
    log = ("/virtual/main.c:19:27: error: incompatible pointer types\n"
           "    struct tcp_sock *ts = ((struct tcp_sock *)sk);\n"
           "                          ^\n")
    assert format_diagnostics(log, cell, "cell", 1) == [
        "cell, line 4: error: incompatible pointer types",
        "    struct tcp_sock *ts = tcp_sk(sk);"]


def test_doctor_names_what_xdp_check_lacks_in_least_privilege():
    code = """
        from ebpf_magic.setup import doctor
        scratch = doctor.Scratch()
        try:
            scratch.make_veth()
            print(scratch.skipped["XDP"].fix)
        finally:
            scratch.close()
    """
    caps = "+bpf,+perfmon,+net_admin,+syslog"
    r = _isolated(code, "setpriv", "--reuid=ebpf-kernel", "--regid=ebpf-kernel",
                  "--clear-groups", "--no-new-privs", f"--inh-caps=-all,{caps}",
                  f"--ambient-caps=-all,{caps}", f"--bounding-set=-all,{caps}")
    assert r.stdout.startswith(
        "Making the scratch network namespace needs CAP_SYS_ADMIN, which this process lacks "
        "(it has CAP_NET_ADMIN, enough for XDP itself)"), r.stdout + r.stderr


LIBBPF_TAIL = '\nchar LICENSE[] SEC("license") = "GPL";\n'


def test_libbpf_unknown_helper_is_named_with_near_helpers():
    src = ('SEC("tracepoint/syscalls/sys_enter_getppid")\nint f(void *ctx) {\n'
           "  __u32 p = bpf_get_current_pid();\n  return p; }" + LIBBPF_TAIL)
    with pytest.raises(BPFError) as info:
        Program(src)
    assert info.value.message == ("bpf_get_current_pid() is not a BPF helper (nothing declares "
                                  "it). Did you mean: bpf_get_current_pid_tgid, "
                                  "bpf_get_current_cgroup_id, bpf_get_current_uid_gid?")


def test_libbpf_verifier_hint_fits_null_pointer():
    src = ("struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 4); "
           '__type(key, int); __type(value, __u64); } a SEC(".maps");\n'
           'SEC("tracepoint/syscalls/sys_enter_getppid")\n'
           "int f(void *ctx) { int k = 0; __u64 *v = bpf_map_lookup_elem(&a, &k);\n"
           "  return *v; }" + LIBBPF_TAIL)
    with pytest.raises(VerifierError) as info:
        Program(src)
    assert info.value.hint.startswith("A map lookup can return NULL: check the pointer")
    assert_no_kernel_address(info.value)


@pytest.mark.parametrize(("last_lines", "hint_start"), [
    ("back-edge from insn 12 to 5", "The verifier could not prove a loop ends"),
    ("BPF program is too large. Processed 1000001 insn", "The verifier could not prove a loop"),
    ("invalid read from stack R2 off -16+0 size 8", "A read of a stack variable that was never"),
    ("R1 pointer arithmetic on map_ptr prohibited", "Pointer arithmetic with a value"),
    ("R1 invalid mem access 'scalar'", "A direct read of memory the program does not own"),
    ("unknown func bpf_get_stackid#27", "A helper this program type may not call"),
    ("7: (79) r0 = *(u64 *)(r0 +0)\nR0 invalid mem access 'map_value_or_null'",
     "A map lookup can return NULL"),
])
def test_verifier_hint_by_rejection_class(last_lines, hint_start):
    from ebpf_magic.suggest import verifier_hint

    log = "0: (b7) r1 = 0\n" + last_lines + "\nprocessed 8 insns (limit 1000000)"
    assert verifier_hint(log).startswith(hint_start)
