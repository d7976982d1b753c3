"""The exercises' checker: right answers pass, and each kind of mistake is named.

Pure tests: answers are plain values, histograms, and recorded programs read through the
read API (the notebooks' runs with their solutions are in test_notebook_exercises.py).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import ebpf_magic
from ebpf_magic import exercises
from ebpf_magic.data import histograms
from ebpf_magic.exercises import EMPTY, NEEDS_KERNEL, RIGHT, WRONG, Verdict, check

RECORDINGS = Path(__file__).resolve().parent.parent / "notebooks" / "recordings"


def wrong(verdict: Verdict, *words: str) -> None:
    assert verdict.status == WRONG, verdict
    for word in words:
        assert word in verdict.message, verdict


def test_a_verdict_reads_as_its_status_and_message() -> None:
    right = Verdict(RIGHT, "matches")
    assert bool(right) and str(right) == "✓ right: matches" and repr(right) == str(right)
    no = Verdict(WRONG, "a <b> & c")
    assert not no and str(no) == "✗ not yet: a <b> & c"
    assert "a &lt;b&gt; &amp; c" in no._repr_html_() and "✗ not yet" in no._repr_html_()


@pytest.mark.parametrize("answer", [None, ..., {}, {1: 0, 2: 0}, [None, None], pd.DataFrame(),
                                    histograms.from_values(np.zeros(0))])
def test_a_placeholder_or_nothing_counted_is_not_attempted(answer) -> None:
    verdict = check(answer, 100)
    assert verdict.status == EMPTY and not verdict


def test_right_answers_of_every_shape() -> None:
    assert check(6_758_400, 6_758_400.0)
    assert check(np.int64(3), 3)
    assert check({4242: 100, 1: 7}, {4242: 100}), "keys the truth does not name are not judged"
    assert check(pd.Series({"a": 1, "b": 2}), {"a": 1, "b": 2})
    assert check([0, 5, 9], (0, 5, 9))
    values = np.array([5000, 5100, 9000])
    assert check(histograms.from_values(values), histograms.from_values(values[::-1]))
    one_bucket = pd.DataFrame({"slot": [13], "low": [4096], "high": [8192], "count": [20]})
    assert histograms.Histogram(one_bucket).kind == "linear", "a guess the check must not need"
    assert check(one_bucket, histograms.from_values(np.full(20, 5000)))
    verdict = check(1.9, 2.0, tolerance=0.1)
    assert verdict and "within 10%" in verdict.message
    wrong(check(1.7, 2.0, tolerance=0.1), "less than the truth")


def test_no_ground_truth_yet_is_not_a_wrong_answer() -> None:
    assert check(5, None).status == EMPTY


def test_a_replayed_program_cannot_be_checked_and_a_stopped_one_is_not_there() -> None:
    prog = ebpf_magic.load(RECORDINGS / "hello.bpfrec")
    verdict = check(prog.maps["calls"], {1: 100}, program=prog)
    assert verdict.status == NEEDS_KERNEL and "replayed" in verdict.message
    stopped = SimpleNamespace(name="ex", running=False, readable=False)
    verdict = check({1: 100}, {1: 100}, program=stopped)
    assert verdict.status == EMPTY and "not running" in verdict.message
    running = SimpleNamespace(name="ex", running=True, readable=True)
    assert check({1: 100}, {1: 100}, program=running)


def test_a_recorded_map_and_stream_are_answers() -> None:
    prog = ebpf_magic.load(RECORDINGS / "hello.bpfrec")
    [(pid, calls)] = prog.maps["calls"].df[["key", "value"]].itertuples(index=False)
    assert check(prog.maps["calls"], {int(pid): int(calls)})
    writes = ebpf_magic.load(RECORDINGS / "writes.bpfrec").events["events"]
    by_comm = writes.df["comm"].value_counts()
    assert check(writes, {"dd": int(by_comm["dd"])}, key="comm")
    wrong(check(writes, {"dd": 1}, key="nope"), "no column 'nope'", "comm")
    sizes = ebpf_magic.load(RECORDINGS / "kinds.bpfrec").maps["sizes"]
    assert check(sizes, histograms.from_values(np.repeat([8, 100, 1000, 10000], 50)))


def test_counted_per_thread_where_per_process_was_asked() -> None:
    threads = {500: 500, 501: 500, 502: 500, 900: 900}
    truth = {500: 60, 900: 5}
    verdict = check({500: 10, 501: 20, 502: 30, 900: 5}, truth, threads=threads)
    wrong(verdict, "each thread on its own", "501, 502", "process 500", "upper 32 bits", ">> 32")
    per_thread = {500: 10, 501: 20, 502: 30}
    verdict = check({500: 60}, per_thread, threads=threads)
    wrong(verdict, "per process", "lower 32 bits")
    assert check(per_thread, per_thread, threads=threads)


def test_one_cpu_of_a_per_cpu_map_or_its_slots_unsummed() -> None:
    per_cpu = SimpleNamespace(df=pd.DataFrame({"key": [0], "value[cpu0]": [52],
                                               "value[cpu1]": [48], "total": [100]}))
    wrong(check(52, 100, per_cpu=per_cpu), "CPU 0's slot only", "total column")
    wrong(check([52, 48], 100, per_cpu=per_cpu), "per-CPU slots", "add them up")
    assert check(100, 100, per_cpu=per_cpu)
    wrong(check(pd.Series({"dd": 60, "cat": 40}), 100), "you have the parts", "add them up")
    wrong(check([1, 2], 100), "asks for one number")


@pytest.mark.parametrize(("answer", "truth", "unit", "words"), [
    (5e6, 5e3, "µs", ["1,000 times larger", "in ns", "asks for µs", "bpf_ktime_get_ns()"]),
    (5.0, 5e3, "µs", ["1,000 times smaller", "in ms", "multiply by 1,000"]),
    (5e3, 5.0, "ms", ["in µs", "divide by 1,000"]),
    (5e6, 5.0, "ms", ["in ns", "divide by 1,000,000"]),
    (5.0, 5.0 * 1024, "bytes", ["in KiB"]),
    (5e6, 5e3, "", ["1,000 times larger", "unit mixed up"]),
])
def test_a_unit_off_by_its_factor(answer: float, truth: float, unit: str,
                                  words: list[str]) -> None:
    wrong(check(answer, truth, unit=unit), *words)


def test_units_of_a_value_per_key() -> None:
    wrong(check({1: 2000.0, 2: 4000.0}, {1: 2.0, 2: 4.0}, unit="ms"), "in µs")


def test_histogram_buckets_one_slot_off_in_ns_or_cumulative() -> None:
    us = np.array([5000, 5050, 5100, 12000, 3000])
    truth = histograms.from_values(us)
    slots = histograms.log2_slots(us)
    off = histograms.Histogram(histograms.bucket_frame(slots - 1, np.ones(len(us), np.int64)))
    wrong(check(off, truth), "one bucket off", "floor(log2 v) + 1", "[2^(i-1), 2^i)")
    wrong(check(histograms.from_values(us * 1000), truth, unit="µs"), "in ns", "asks for µs")
    wrong(check(histograms.from_values(us // 1000), truth, unit="µs"), "in ms")
    df = truth.df.copy()
    df["count"] = df["count"].cumsum()
    wrong(check(histograms.Histogram(df), truth), "running totals", "its own range")
    more = histograms.from_values(np.append(us, [7000, 7000]))
    wrong(check(more, truth), "2 more than the truth", "[4K, 8K): 5 where 3")
    wrong(check(5, truth), "asks for a histogram")


def test_running_totals_where_intervals_were_asked() -> None:
    per_interval = [0, 300, 40, 0, 3000, 1]
    running = list(np.cumsum(per_interval))
    wrong(check(running, per_interval), "running totals", "subtract the snapshot before")
    wrong(check(per_interval[1:], per_interval), "5 values where the truth has 6")
    wrong(check([0, 300, 41, 0, 3000, 1], per_interval), "1 of 6 values differ", "position 2")


def test_keys_in_network_byte_order() -> None:
    wrong(check({0x0008: 50, 0x0608: 1}, {0x0800: 50}), "0x0008 is 0x0800", "bpf_ntohs()")
    wrong(check({0x0100000a: 3}, {0x0a000001: 3}), "bpf_ntohl()")


def test_a_mistake_the_notebook_names() -> None:
    mistakes = {"you kept dd's report on fd 2": 6_758_597, "that counts writes": 500}
    verdict = check(6_758_597, 6_758_400, mistakes=mistakes)
    wrong(verdict, "fd 2")
    wrong(check(500, 6_758_400, mistakes=mistakes), "counts writes")
    wrong(check({"work": 63, "heavy": 43}, {"work": 0, "heavy": 43},
                mistakes={"inclusive": {"work": 63, "heavy": 43}}), "inclusive")


def test_more_fewer_and_missing_keys_say_where() -> None:
    wrong(check(130, 100), "30 more than the truth, 100", "filter on the pid")
    wrong(check(70, 100), "30 less than the truth", "too strict")
    wrong(check({1: 100}, {1: 100, 7: 100}), "no entry for 7", "your answer has 1")
    wrong(check({1: 130, 7: 200}, {1: 100, 7: 100}), "1: 130 where 100", "7: 200 where 100",
          "filter on the pid")


def test_unreadable_answers_say_what_they_are() -> None:
    wrong(check("many", 5), "'many' is not a number")
    wrong(check(pd.DataFrame({"a": [1], "b": [2], "c": [3]}), 5), "columns a, b, c")
    with pytest.raises(ValueError, match="not a number"):
        check(5, "truth")
    assert exercises.check is check
