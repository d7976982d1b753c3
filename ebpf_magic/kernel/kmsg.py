"""The kernel's log (``/dev/kmsg``): what it said lately, for errors that say why only there."""

from __future__ import annotations

import errno
import os
import time

KMSG = "/dev/kmsg"
MAX_RECORDS = 100_000  # the log's ring holds far fewer; a bound on a read that never ends


def recent(seconds: float = 10.0) -> list[str]:
    """The kernel's messages of the last ``seconds``, oldest first; empty where the log cannot
    be read (reading it needs CAP_SYSLOG, or ``kernel.dmesg_restrict`` = 0)."""
    try:
        fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    # records carry microseconds of the clock the kernel's printk uses: boot time, near enough
    since = (time.clock_gettime(time.CLOCK_BOOTTIME) - seconds) * 1e6
    found = []
    try:
        for _ in range(MAX_RECORDS):
            try:
                record = os.read(fd, 8192)
            except OSError as e:
                if e.errno == errno.EPIPE:  # overwritten while read: go on with the next
                    continue
                break  # EAGAIN: no more
            head, _, text = record.decode(errors="replace").partition(";")
            fields = head.split(",")
            if len(fields) >= 3 and fields[2].isdigit() and int(fields[2]) >= since:
                found.append(text.split("\n", 1)[0])
    finally:
        os.close(fd)
    return found
