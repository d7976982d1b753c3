"""Interpolation of notebook variables into C, leaving C braces alone."""

from types import SimpleNamespace

import pytest

from ebpf_magic.source import define_flags, function_names, interpolate


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
    assert define_flags({"PID": 5, "DEBUG": None}) == ["-DPID=5", "-DDEBUG"]
    assert define_flags(["A=1", "B"]) == ["-DA=1", "-DB"]
    with pytest.raises(ValueError, match="macro name"):
        define_flags(["1BAD"])


def test_function_names():
    src = "int on_a(struct pt_regs *ctx) { return 0; }\nstatic int helper(int x);\n" \
          "int on_b(void *ctx) {}"
    assert function_names(src) == ["on_a", "on_b"]
