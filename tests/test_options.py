"""Bad %%bpf options: a short error before anything compiles, and running programs untouched.

The line is read by the package's own parser and interpolation, never by
IPython's variable expansion (which evaluates expressions and is quadratic in
the line's length).
"""

import os
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from ebpf_magic import Program
from ebpf_magic.errors import BPFError, OptionError, ProbeSpecError

from conftest import COUNT_CELL, loaded_prog_ids, own_bpf_fds

BODY = "int f(void *ctx) { return 0; }\n"
USAGE_LINE = "usage: %%bpf [-a SPEC[=FUNCTION]]"
MACRO = "is not a C macro name (a letter or underscore, then letters, digits or underscores)"
ROWS = "argument --max-rows: wants a whole number from 1 to 1,000,000,000, got"
EVERY = "argument --record: wants a number of seconds above 0 and at most 86400, got"

# (options after NAME, the first line of the error)
BAD = [
    ("-D 1X=3", f"%%bpf: argument -D/--define: '1X' {MACRO}"),
    ('-D "A B"', f"%%bpf: argument -D/--define: 'A B' {MACRO}"),
    ("-D =3", f"%%bpf: argument -D/--define: '' {MACRO}"),
    ("--max-rows -5", f"%%bpf: {ROWS} '-5'"),
    ("--max-rows 0", f"%%bpf: {ROWS} '0'"),
    ("--max-rows 10000000000000", f"%%bpf: {ROWS} '10000000000000'"),
    ("--max-rows 1e6", f"%%bpf: {ROWS} '1e6'"),
    ("--record -1", f"%%bpf: {EVERY} '-1'"),
    ("--record nan", f"%%bpf: {EVERY} 'nan'"),
    ("--record inf", f"%%bpf: {EVERY} 'inf'"),
    ("--record 0", f"%%bpf: {EVERY} '0'"),
    ("-p 0", "%%bpf: argument -p/--pid: wants a whole number from 1 to 4,194,304, got '0'"),
    ("--pid x", "%%bpf: argument -p/--pid: wants a whole number from 1 to 4,194,304, got 'x'"),
    ("--cflags \"'-Wall\"", "%%bpf: argument --cflags: No closing quotation in \"'-Wall\""),
]


@pytest.fixture
def no_ipython_expansion(shell, monkeypatch):
    """The shell, failing any call of IPython's own variable expansion."""

    def refuse(*args, **kwargs):
        raise AssertionError("IPython's var_expand was called")

    monkeypatch.setattr(shell, "var_expand", refuse)
    return shell


def failure(shell, cell: str, capsys) -> tuple[BaseException, str]:
    """The exception a failing cell raised, and everything it printed."""
    result = shell.run_cell(cell)
    assert not result.success
    out = capsys.readouterr()
    return result.error_in_exec, out.out + out.err


def assert_short(error: BaseException, shown: str, first_line: str) -> None:
    assert isinstance(error, UsageError)
    assert str(error).splitlines()[0] == first_line
    assert "Traceback" not in shown
    assert f"UsageError: {first_line}\n" in shown


@pytest.mark.parametrize("options,message", BAD, ids=[b[0] for b in BAD])
def test_bad_option_is_a_short_usage_error(shell, capsys, options, message):
    error, shown = failure(shell, f"%%bpf p {options}\n{BODY}", capsys)
    assert_short(error, shown, message)
    assert str(error).splitlines()[1].startswith(USAGE_LINE)
    assert "p" not in shell.user_ns
    assert shell.run_line_magic("bpf", "list").empty


def test_keyword_name_is_refused(shell, capsys):
    error, shown = failure(shell, f"%%bpf for\n{BODY}", capsys)
    assert_short(error, shown, "%%bpf: NAME must be a Python identifier and not a keyword, "
                               "got 'for'")


def test_attach_spec_checked_before_start(shell, capsys):
    error, shown = failure(shell, f"%%bpf p -a tracepoint:oops\n{BODY}", capsys)
    assert isinstance(error, ProbeSpecError)
    assert "'tracepoint:oops' does not have the form of a tracepoint probe" in shown
    assert "Traceback" not in shown


def test_long_line_parsed_without_ipython_expansion(no_ipython_expansion, capsys):
    shell = no_ipython_expansion
    line = f"%%bpf p -D {'A' * 100_000}=$x -D {{x}}=1 --max-rows 0\n{BODY}"
    assert len(line) > 100_000
    # $x and {x} expand by the package's rules: only names that exist
    error, shown = failure(shell, line, capsys)
    assert_short(error, shown, f"%%bpf: argument -D/--define: '{{x}}' {MACRO}")
    shell.user_ns["x"] = "B"
    error, shown = failure(shell, line, capsys)
    assert_short(error, shown, f"%%bpf: {ROWS} '0'")
    shell.user_ns["x"] = "9Z"
    error, shown = failure(shell, line, capsys)
    assert_short(error, shown, f"%%bpf: argument -D/--define: '9Z' {MACRO}")


def test_many_options_refused_at_once(no_ipython_expansion, capsys):
    shell = no_ipython_expansion
    line = "%%bpf p" + " -D A=1" * 15_000
    assert len(line) > 100_000
    error, shown = failure(shell, f"{line}\n{BODY}", capsys)
    assert_short(error, shown, "%%bpf: the line has 30,001 words, more than 1,000; put long "
                               "lists of macros in the cell as #define lines")


def test_echoed_values_are_clipped(shell, capsys):
    error, shown = failure(shell, f"%%bpf p --max-rows {'9' * 5000}\n{BODY}", capsys)
    assert_short(error, shown, f"%%bpf: {ROWS} '{'9' * 60}... (5,000 characters)'")


def test_line_magic_uses_package_interpolation(no_ipython_expansion):
    shell = no_ipython_expansion
    shell.user_ns["victim"] = "ghost"
    with pytest.raises(UsageError, match="^no program named ghost; running: none$"):
        shell.run_line_magic("bpf", "stop $victim")
    with pytest.raises(UsageError, match=r"^no program named \{victim\}, \$victim; "):
        shell.run_line_magic("bpf", "stop {{victim}} $$victim")
    with pytest.raises(UsageError, match=r"^no program named \{nobody\}; "):
        shell.run_line_magic("bpf", "stop {nobody}")


def test_line_magic_quoting_error_is_short(shell):
    with pytest.raises(UsageError, match="^%bpf stop: No closing quotation$"):
        shell.run_line_magic("bpf", 'stop "a')


@pytest.mark.parametrize("every", ["nan", "-1", "0", "3601"])
def test_browse_interval_checked(shell, every):
    message = ("%bpf browse: --every wants a number of seconds above 0 and at most 3600, "
               f"got '{every}'")
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("bpf", f"browse --every {every}")
    assert str(info.value) == message


@pytest.mark.parametrize("defines,shown", [(["1X=3"], "'1X'"), (["A B"], "'A B'"),
                                           (["=3"], "''"), ({"A-B": 1}, "'A-B'")])
def test_program_rejects_bad_define_names(defines, shown, no_leaks):
    with pytest.raises(OptionError) as info:
        Program(BODY, defines=defines)
    assert isinstance(info.value, BPFError) and isinstance(info.value, ValueError)
    assert info.value.message == f"{shown} is not a C macro name"
    assert info.value.hint == ("A macro name is a letter or underscore, then letters, digits "
                               "or underscores: PID, MAX_LEN, _DEBUG.")


# -- on the kernel: a bad line starts nothing and stops nothing ------------------------


def own_prog_ids() -> set[int]:
    """Ids of the BPF programs this process holds a descriptor of, from /proc/self/fdinfo."""
    ids = set()
    for info in Path("/proc/self/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        ids |= {int(line.split()[1]) for line in text.splitlines()
                if line.startswith("prog_id:")}
    return ids


def count_cell(name: str, extra: str = "") -> str:
    return COUNT_CELL.format(name=f"{name} {extra}".strip(), pid=os.getpid())


@pytest.mark.kernel
@pytest.mark.parametrize("options,message", BAD, ids=[b[0] for b in BAD])
def test_bad_option_starts_nothing_and_keeps_programs(shell, capsys, no_leaks, options,
                                                      message):
    assert shell.run_cell(count_cell("keep")).success
    assert shell.run_cell(count_cell("p")).success
    earlier = shell.user_ns["p"]
    progs, fds = own_prog_ids(), sorted(own_bpf_fds())
    assert set(earlier.prog_ids()) | set(shell.user_ns["keep"].prog_ids()) <= progs
    assert progs <= loaded_prog_ids()
    capsys.readouterr()

    error, shown = failure(shell, count_cell("p", options), capsys)
    assert_short(error, shown, message)
    assert own_prog_ids() == progs
    assert sorted(own_bpf_fds()) == fds
    table = shell.run_line_magic("bpf", "list")
    assert list(table["name"]) == ["keep", "p"]
    assert set(table["state"]) == {"running"}
    assert shell.user_ns["p"] is earlier
    for _ in range(7):
        os.getppid()
    assert shell.user_ns["keep"].maps["calls"][os.getpid()] == 7
    assert earlier.maps["calls"][os.getpid()] == 7
    shell.run_line_magic("bpf", "stop --all")


@pytest.mark.kernel
def test_bad_attach_spec_keeps_running_program(shell, capsys, no_leaks):
    assert shell.run_cell(count_cell("p")).success
    earlier, progs = shell.user_ns["p"], own_prog_ids()
    assert set(earlier.prog_ids()) <= progs
    error, shown = failure(shell, count_cell("p", "-a tracepoint:oops"), capsys)
    assert isinstance(error, ProbeSpecError) and "Traceback" not in shown
    assert earlier.running and shell.user_ns["p"] is earlier
    assert own_prog_ids() == progs
    shell.run_line_magic("bpf", "stop p")


@pytest.mark.kernel
@pytest.mark.parametrize("line", ["-D PID=$me", "-D PID={me}", "-D PID=$me --raw"])
def test_line_variables_without_ipython_expansion(no_ipython_expansion, no_leaks, line):
    shell = no_ipython_expansion
    shell.user_ns["me"] = os.getpid()
    braced = line.replace("{", "{{").replace("}", "}}")
    cell = COUNT_CELL.replace("-D PID={pid}", braced).format(name="p")
    assert shell.run_cell(cell).success
    for _ in range(5):
        os.getppid()
    assert shell.user_ns["p"].maps["calls"].df.to_dict("records") == [
        {"key": os.getpid(), "value": 5}]
    shell.run_line_magic("bpf", "stop p")
