"""Perf events (software, hardware, sampling): one event per CPU running one program."""

from __future__ import annotations

import os
from collections.abc import Iterable

from ebpf_magic.kernel import sysbpf
from ebpf_magic.kernel.link import probe_events
from ebpf_magic.kernel.link.base import Link, perf_attr, perf_event_with


def perf_event(prog_fd: int, ev_type: int, config: int, *, sample_period: int = 0,
               sample_freq: int = 0, pid: int = -1, cpus: Iterable[int] | None = None) -> Link:
    """Attach ``prog_fd`` to perf event ``(ev_type, config)`` on every online CPU (or ``cpus``).

    Give ``sample_period`` (events between runs) or ``sample_freq`` (runs per second).
    """
    probe_events.sweep_once()
    description = f"perf_event:{ev_type}:{config}"
    attr = perf_attr(ev_type, config, sample_period=sample_period, sample_freq=sample_freq)
    detach: list[int] = []  # BPF links, or the events themselves where there are none
    events: list[int] = []  # events under BPF links
    try:
        for cpu in (sysbpf.online_cpus() if cpus is None else cpus):
            fd, inert = perf_event_with(prog_fd, attr, pid, cpu, f"{description} on CPU {cpu}")
            detach.append(fd)
            if inert is not None:
                events.append(inert)
    except BaseException:
        for fd in detach + events:
            os.close(fd)
        raise
    return Link(description, detach, release_fds=events)
