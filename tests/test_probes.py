"""Attach specs in bpftrace syntax and BCC's naming conventions."""

import pytest

from ebpf_magic.backend import named_probes
from ebpf_magic.errors import ProbeSpecError
from ebpf_magic.probes import Probe, bind_explicit


@pytest.mark.parametrize("spec, kind, target, fn", [
    ("kprobe:do_sys_openat2", "kprobe", "do_sys_openat2", ""),
    ("kr:vfs_read=ret", "kretprobe", "vfs_read", "ret"),
    ("tracepoint:syscalls:sys_enter_write=on_write", "tracepoint", "syscalls:sys_enter_write",
     "on_write"),
    ("t:sched:sched_switch", "tracepoint", "sched:sched_switch", ""),
    ("rawtracepoint:sched_switch", "rawtracepoint", "sched_switch", ""),
    ("uprobe:/bin/bash:readline=f", "uprobe", "/bin/bash:readline", "f"),
    ("uretprobe:c:malloc", "uretprobe", "c:malloc", ""),
    ("usdt:/usr/bin/app:prov:probe", "usdt", "/usr/bin/app:prov:probe", ""),
    ("usdt:/usr/bin/app:probe", "usdt", "/usr/bin/app:probe", ""),
    ("profile:hz:99", "profile", "hz:99", ""),
    ("software:cpu-clock:100000", "software", "cpu-clock:100000", ""),
    ("hardware:cycles", "hardware", "cycles", ""),
    ("xdp:veth0=count", "xdp", "veth0", "count"),
])
def test_parse(spec, kind, target, fn):
    p = Probe.parse(spec)
    assert (p.kind, p.target, p.function) == (kind, target, fn)


@pytest.mark.parametrize("spec, words", [
    ("nonsense", "cannot parse"),
    ("blah:foo", "cannot parse"),
    ("tracepoint:write", "form of a tracepoint"),
    ("profile:hz:0", "profile wants hz:N"),
    ("software:nope", "unknown software event"),
    ("uprobe::malloc", "binary or library is missing"),
])
def test_parse_errors(spec, words):
    with pytest.raises(ProbeSpecError, match=words):
        Probe.parse(spec)


def test_perf_event_rates():
    assert Probe.parse("profile:hz:99").perf_event == (1, 0, {"sample_freq": 99})
    assert Probe.parse("software:page-faults:10").perf_event == (1, 2, {"sample_period": 10})
    assert Probe.parse("hardware:instructions").perf_event == (0, 1, {"sample_period": 1_000_000})


def test_auto_probes():
    def auto_probe(function):
        return (named_probes("bcc", [function]) or [None])[0]

    assert auto_probe("kprobe__do_sys_open") == Probe("kprobe", "do_sys_open",
                                                       "kprobe__do_sys_open")
    assert auto_probe("tracepoint__syscalls__sys_enter_write").target == \
        "syscalls:sys_enter_write"
    assert auto_probe("raw_tracepoint__sched_switch").kind == "rawtracepoint"
    assert auto_probe("kfunc__vfs_read").kind == "kfunc"
    assert auto_probe("lsm__file_open").kind == "lsm"
    assert auto_probe("helper") is None
    # libbpf programs name their probes in SEC(), never in function names
    assert named_probes("libbpf", ["kprobe__do_sys_open"]) == []


def test_bind_single_free_function():
    implied = named_probes("bcc", ["on", "kprobe__x"])
    probes = implied + [Probe.parse("tracepoint:a:b")]
    assert bind_explicit(probes, ["on", "kprobe__x"])[1].function == "on"


def test_bind_ambiguous_lists_candidates():
    with pytest.raises(ProbeSpecError, match="Candidates: one, two"):
        bind_explicit([Probe.parse("tracepoint:a:b")], ["one", "two"])


def test_bind_unknown_function():
    with pytest.raises(ProbeSpecError, match="no C function named nope"):
        bind_explicit([Probe.parse("tracepoint:a:b=nope")], ["one"])
