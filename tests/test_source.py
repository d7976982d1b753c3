"""Preparing C source: notebook variables (C braces left alone) and -D macro flags."""

from types import SimpleNamespace

import pytest

from ebpf_magic.errors import OptionError
from ebpf_magic.source import define_flags, function_names, interpolate, parse_define


def test_braced_and_dollar_variables():
    ns = {"PID": 42, "cfg": SimpleNamespace(size=16), "on": True}
    assert interpolate("if (pid != {PID}) return 0; x = $PID; y = {cfg.size}; z={on};", ns) == \
        "if (pid != 42) return 0; x = 42; y = 16; z=1;"


def test_c_braces_untouched():
    c = "int f(void *ctx) { return 0; }\nint a[] = {x};\nstruct s v = {{1, 2}, {3}};"
    assert interpolate(c, {"y": 1}) == c


def test_escapes_keep_literal_names():
    assert interpolate("{{PID}} $$PID {PID}", {"PID": 7}) == "{PID} $PID 7"


def test_unknown_names_stay():
    assert interpolate("{nothere} $nothere", {}) == "{nothere} $nothere"


def test_define_flags():
    assert define_flags({"PID": 5, "DEBUG": None, "ON": True}) == ["-DPID=5", "-DDEBUG", "-DON=1"]
    assert define_flags(["A=1", "B", "_C=x=y", "E="]) == ["-DA=1", "-DB", "-D_C=x=y", "-DE="]
    assert define_flags("LONE=2") == ["-DLONE=2"]


@pytest.mark.parametrize("defines,name", [
    (["1BAD"], "'1BAD'"), (["1X=3"], "'1X'"), (["A B=1"], "'A B'"), (["=3"], "''"),
    ({"A-B": 1}, "'A-B'"), ({7: 1}, "7"), (["\u00e9t\u00e9=1"], "'\u00e9t\u00e9'"),
    (["A\n=1"], "'A\\n'")])
def test_define_flags_refuse_bad_names(defines, name):
    with pytest.raises(OptionError) as info:
        define_flags(defines)
    assert info.value.message == f"{name} is not a C macro name"
    assert "a letter or underscore, then letters, digits or underscores" in info.value.hint
    assert isinstance(info.value, ValueError)


def test_parse_define():
    assert parse_define("PID=42") == ("PID", "42")
    assert parse_define("DEBUG") == ("DEBUG", None)
    assert parse_define("S=") == ("S", "")
    with pytest.raises(OptionError, match="^'9' is not a C macro name"):
        parse_define("9=9")


def test_function_names():
    src = "int on_a(struct pt_regs *ctx) { return 0; }\nstatic int helper(int x);\n" \
          "int on_b(void *ctx) {}"
    assert function_names(src) == ["on_a", "on_b"]
