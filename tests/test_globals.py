"""Global variables of libbpf programs: set before load, read and written after, on the kernel."""

from __future__ import annotations

import os
import threading

import pytest
from IPython.core.error import UsageError

from ebpf_magic.backend import libbpf
from ebpf_magic.errors import BPFError
from ebpf_magic.kernel import sysbpf
from ebpf_magic.magics.cell import parse
from ebpf_magic.program import Program

from conftest import COUNT_CELL

_OK, _WHY = libbpf.available()
needs_libbpf = pytest.mark.skipif(not _OK, reason=f"libbpf backend unavailable: {_WHY}")

# Counts getppid() calls per process, only target_pid's once it is set.
FILTER = """\
const volatile int target_pid = 0;

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, u32);
    __type(value, u64);
    __uint(max_entries, 64);
} calls SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (target_pid && pid != target_pid)
        return 0;
    u64 one = 1, *n = bpf_map_lookup_elem(&calls, &pid);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        bpf_map_update_elem(&calls, &pid, &one, BPF_NOEXIST);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

# Counts target_pid's getppid() calls in .bss while `enabled` is set; more kinds of globals.
COUNTER = """\
enum gmode { GMODE_OFF, GMODE_COUNT, GMODE_DOUBLE };
struct glimits { u32 low; u32 high; };

const volatile int target_pid = 0;
const volatile enum gmode mode = GMODE_COUNT;
const volatile char tag[8] = "none";
const volatile struct glimits limits = { 1, 2 };
const volatile u16 weights[3] = { 1, 2, 3 };
volatile u32 enabled;
u64 counted;
u64 seen = 7;

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
    if ((bpf_get_current_pid_tgid() >> 32) != target_pid)
        return 0;
    __sync_fetch_and_add(&seen, 1);
    if (!enabled || mode == GMODE_OFF)
        return 0;
    __sync_fetch_and_add(&counted, mode == GMODE_DOUBLE ? 2 : 1);
    bpf_printk("%s", tag);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

COUNTER_GLOBALS = "target_pid, mode, tag, limits, weights, seen, enabled, counted"


def _getppid(n: int) -> None:
    for _ in range(n):
        os.getppid()


def _child_on_signal(n: int) -> tuple[int, int]:
    """Fork a child that makes ``n`` getppid() calls once a byte arrives; (pid, pipe to it)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        try:
            os.read(r, 1)
            _getppid(n)
        finally:
            os._exit(0)
    os.close(r)
    return pid, w


def _release_child(pid: int, w: int) -> None:
    os.write(w, b"x")
    os.close(w)
    os.waitpid(pid, 0)


# -- the library --------------------------------------------------------------------------


@needs_libbpf
@pytest.mark.kernel
def test_rodata_set_before_load_filters_to_the_child(no_leaks):
    child, go = _child_on_signal(300)
    try:
        with Program(FILTER, globals={"target_pid": child}) as prog:
            _getppid(200)  # the parent's calls, filtered out
            _release_child(child, go)
            go = None
            _getppid(200)
            counts = prog.maps["calls"].df
            assert prog.globals["target_pid"] == child
    finally:
        if go is not None:
            _release_child(child, go)
    assert counts.to_dict("records") == [{"key": child, "value": 300}]


@needs_libbpf
@pytest.mark.kernel
def test_bss_counter_and_switch(no_leaks):
    with Program(COUNTER, globals={"target_pid": os.getpid()}) as prog:
        # the data sections are no maps of the user's; bpf_printk's format is no global
        assert list(prog.maps) == []
        assert ", ".join(prog.globals) == COUNTER_GLOBALS
        _getppid(50)
        assert (prog.globals["counted"], prog.globals["seen"]) == (0, 57)
        prog.globals["enabled"] = 1
        _getppid(123)
        assert (prog.globals["counted"], prog.globals["seen"]) == (123, 180)
        prog.globals["enabled"] = 0
        _getppid(40)
        assert (prog.globals["counted"], prog.globals["seen"]) == (123, 220)
        prog.globals["counted"] = 5  # writing one variable keeps its neighbours
        assert (prog.globals["counted"], prog.globals["seen"]) == (5, 220)
        df = prog.globals.df
    assert list(df.columns) == ["name", "section", "c_type", "value"]
    rows = {r["name"]: (r["section"], r["c_type"], r["value"]) for r in df.to_dict("records")}
    assert rows == {
        "target_pid": (".rodata", "const volatile int", os.getpid()),
        "mode": (".rodata", "const volatile enum gmode", "GMODE_COUNT"),
        "tag": (".rodata", "const volatile char[8]", "none"),
        "limits": (".rodata", "const volatile struct glimits", {"low": 1, "high": 2}),
        "weights": (".rodata", "const volatile u16[3]", [1, 2, 3]),
        "enabled": (".bss", "volatile u32", 0),
        "counted": (".bss", "u64", 5),
        "seen": (".data", "u64", 220),
    }


@needs_libbpf
@pytest.mark.kernel
def test_writing_a_switch_keeps_the_programs_updates_of_its_neighbour(no_leaks):
    # `seen` and `enabled` share .bss: the child's 200,000 calls all count while `enabled` flips
    calls = 200_000
    child, go = _child_on_signal(calls)
    with Program(COUNTER.replace("u64 seen = 7;", "u64 seen;"),
                 globals={"target_pid": child}) as prog:
        assert prog.globals.df.set_index("name").loc[["seen", "enabled"], "section"].tolist() \
            == [".bss", ".bss"]
        os.write(go, b"x")
        os.close(go)
        flips = 0
        while os.waitpid(child, os.WNOHANG) == (0, 0):
            prog.globals["enabled"] = flips % 2
            flips += 1
        assert flips > 100 and prog.globals["seen"] == calls


@needs_libbpf
@pytest.mark.kernel
def test_write_without_a_shared_mapping(monkeypatch, no_leaks):
    # kernels before 5.5 cannot map array maps: the section's value is rewritten whole
    def unmappable(*args, **kwargs):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr("ebpf_magic.data.globalvars.mmap.mmap", unmappable)
    with Program(COUNTER, globals={"target_pid": os.getpid()}) as prog:
        prog.globals["enabled"] = 1
        _getppid(30)
        prog.globals["counted"] = prog.globals["counted"] + 1000
        assert (prog.globals["enabled"], prog.globals["counted"], prog.globals["seen"]) == \
            (1, 1030, 37)


@needs_libbpf
@pytest.mark.kernel
def test_stop_waits_for_a_globals_read_in_progress(monkeypatch, no_leaks):
    # stop() from another thread in the middle of reading .df: the read completes first
    real_lookup = sysbpf.map_lookup
    with Program(COUNTER, globals={"target_pid": os.getpid()}) as prog:
        stopper = threading.Thread(target=prog.stop)

        def lookup(*args):
            if stopper.ident is None:
                stopper.start()
                stopper.join(0.3)  # a stop() that did not wait would close the maps now
            return real_lookup(*args)

        monkeypatch.setattr(sysbpf, "map_lookup", lookup)
        _getppid(4)
        df = prog.globals.df
        stopper.join(5)
    assert not stopper.is_alive() and not prog.running
    assert df.set_index("name")["value"][["target_pid", "seen", "counted"]].tolist() == \
        [os.getpid(), 11, 0]
    with pytest.raises(BPFError, match="was stopped"):
        prog.globals["seen"]


@needs_libbpf
@pytest.mark.kernel
def test_enum_struct_array_and_string_set_before_load(no_leaks):
    values = {"target_pid": os.getpid(), "mode": "GMODE_DOUBLE", "tag": "hello",
              "limits": {"low": 3, "high": 4}, "weights": [7, 8, 9], "enabled": 1, "seen": 100}
    with Program(COUNTER, globals=values) as prog:
        _getppid(10)
        got = dict(prog.globals)
    assert got == {**values, "counted": 20, "seen": 110}


@needs_libbpf
@pytest.mark.kernel
def test_setting_a_const_without_volatile_warns(no_leaks):
    source = COUNTER.replace("const volatile int target_pid", "const int target_pid")
    warning = ("target_pid is const but not volatile, so clang may have built its initial value "
               "into the code and setting it may change nothing; declare it const volatile")
    with Program(source, globals={"mode": "GMODE_OFF"}) as prog:
        assert warning not in prog.warnings
    with Program(source, globals={"target_pid": 1}) as prog:
        assert warning in prog.warnings


@needs_libbpf
@pytest.mark.kernel
@pytest.mark.parametrize(("values", "message", "hint"), [
    ({"target_pdi": 1}, "no global variable 'target_pdi' in the program",
     "Its globals: target_pid, counted, enabled, limits, mode, seen, tag, weights."),
    ({"target_pid": "12"}, "cannot set target_pid (const volatile int) to '12': it takes a whole "
     "number", "e.g. target_pid=123"),
    ({"target_pid": 2 ** 31}, "cannot set target_pid (const volatile int) to 2147483648: "
     "2147483648 does not fit in s32", "target_pid is s32."),
    ({"tag": "far too long"}, "cannot set tag (const volatile char[8]) to 'far too long': "
     "longer than its 8 bytes", "Give a shorter string, or make the array longer."),
    ({"mode": "GMODE_TRIPLE"}, "cannot set mode (const volatile enum gmode) to 'GMODE_TRIPLE': "
     "'GMODE_TRIPLE' is not a name of this enum; names are "
     "['GMODE_OFF', 'GMODE_COUNT', 'GMODE_DOUBLE']", "mode is u32."),
    ({"limits": {"lo": 1}}, "cannot set limits (const volatile struct glimits) to {'lo': 1}: "
     "unknown field(s) ['lo']; fields are ['low', 'high']",
     "limits is struct {u32 low, u32 high}."),
])
def test_bad_globals_are_short_errors(values, message, hint, no_leaks):
    with pytest.raises(BPFError) as e:
        Program(COUNTER, globals=values)
    assert (e.value.message, e.value.hint) == (message, hint)


@needs_libbpf
@pytest.mark.kernel
def test_rodata_is_read_only_after_load(no_leaks):
    with Program(COUNTER, globals={"target_pid": 1}) as prog:
        with pytest.raises(BPFError) as e:
            prog.globals["target_pid"] = 2
        assert prog.globals["target_pid"] == 1
        with pytest.raises(BPFError) as bad:
            prog.globals["enabled"] = -1
        with pytest.raises(KeyError, match="no global variable 'enabld'"):
            prog.globals["enabld"]
    assert e.value.message == "target_pid is in .rodata, which is read-only after load"
    assert e.value.hint == ("Set it before load: %%bpf NAME --global target_pid=VALUE, or "
                            "Program(..., globals={'target_pid': VALUE}).")
    assert bad.value.message.startswith("cannot set enabled (volatile u32) to -1: ")
    with pytest.raises(BPFError,
                       match=r"program 'bpf' was stopped at \d\d:\d\d:\d\d; re-run its cell"):
        prog.globals["counted"]


def test_bcc_program_takes_defines_instead():
    source = COUNT_CELL.split("\n", 1)[1].format(name="x", pid=1)
    with pytest.raises(BPFError) as e:
        Program(source, globals={"target_pid": 1})
    assert e.value.message == ("cannot set target_pid: BCC programs have no settable globals; "
                               "they take -D instead")
    assert e.value.hint.startswith("Write -D target_pid=VALUE (Program(defines={'target_pid': "
                                   "VALUE})) and use target_pid as a macro in the C source")


# -- the magic ----------------------------------------------------------------------------


def test_global_option_values():
    args = parse("p --global a=123 --global b=0x10 --global c=hello --global 'd=\"two words\"' "
                 "--global 'e=[1, 2]' --global \"f={'low': 1}\" --global g=-3 --global h=")
    assert args.globals == [("a", 123), ("b", 16), ("c", "hello"), ("d", "two words"),
                            ("e", [1, 2]), ("f", {"low": 1}), ("g", -3), ("h", "")]
    for bad in ("--global x", "--global =3", "--global 1x=3", "--global a-b=1"):
        with pytest.raises(UsageError, match="--global: wants VAR=VALUE with VAR a C variable"):
            parse(f"p {bad}")


@needs_libbpf
@pytest.mark.kernel
def test_magic_sets_globals(shell, capsys, no_leaks):
    shell.user_ns["me"] = os.getpid()
    cell = COUNTER
    try:
        shell.run_cell_magic("bpf", "g --global target_pid=$me --global mode=GMODE_DOUBLE "
                             "--global tag=cell --global enabled=1", cell)
        prog = shell.user_ns["g"]
        _getppid(25)
        assert (prog.globals["counted"], prog.globals["tag"], prog.globals["mode"]) == \
            (50, "cell", "GMODE_DOUBLE")
        capsys.readouterr()
        # a name the program lacks: a short error naming the globals it has
        with pytest.raises(BPFError, match="no global variable 'target' in the program") as e:
            shell.run_cell_magic("bpf", "g2 --global target=1", cell)
        assert e.value.hint.startswith("Its globals: target_pid, ")
        # a BCC cell refuses --global before stopping the program it would replace
        with pytest.raises(BPFError, match="BCC programs have no settable globals"):
            shell.run_cell_magic("bpf", "g --global target_pid=1",
                                 COUNT_CELL.split("\n", 1)[1].format(pid=1))
        assert prog.running and shell.user_ns["g"] is prog
    finally:
        if "g" in shell.user_ns:
            shell.user_ns["g"].stop()
