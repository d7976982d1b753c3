"""What may be written into tracefs's probe definitions: no line a target could inject."""

from __future__ import annotations

import errno
import os

import pytest

from ebpf_magic.kernel.link import LinkError, probe_events


@pytest.mark.parametrize("target", [
    "/bin/true:0x10\np:other/e /bin/sh:0x10", "/opt/odd name/bin:0x10", "/bin/a\tb:0x10",
    "/bin/a\rb:0x10", "/bin/a\x00b:0x10", "/bin/a\x1bb:0x10", "/bin/a\x7fb:0x10",
    "/bin/a\u2028b:0x10", "/bin/a\u00a0b:0x10", "/bin/vo\u00e0la:0x10",
    os.fsdecode(b"/bin/a\xa0b:0x10"), "do_sys_open\n-:ebpf_magic_1/p_x_0",
], ids=["newline", "space", "tab", "carriage return", "NUL", "escape", "DEL", "line separator",
        "no-break space", "UTF-8 with an 0xA0 byte", "raw 0xA0 byte", "kprobe with newline"])
def test_targets_the_kernel_would_split_are_refused(target: str) -> None:
    with pytest.raises(LinkError) as info:
        probe_events.checked_target("uprobe", target)
    assert info.value.errno == errno.EINVAL
    assert "holds whitespace or a control character, which uprobe_events cannot take" in \
        str(info.value)
    assert "symlink" in info.value.hint


@pytest.mark.parametrize("target", ["/usr/lib/x86_64-linux-gnu/libc.so.6:0x9a2f0",
                                    "/opt/caf\u00e9/bin/app:0x10(0x2a)", "do_sys_open+0x8"])
def test_plain_targets_are_written_as_they_are(target: str) -> None:
    assert probe_events.checked_target("uprobe", target) == os.fsencode(target)


def test_nothing_is_written_for_a_refused_target(monkeypatch) -> None:
    written = []
    monkeypatch.setattr(probe_events, "_write", lambda path, line: written.append(line))
    with pytest.raises(LinkError):
        probe_events.add("uprobe", "/bin/true:0x10\n-:ebpf_magic_1/p_true_0")
    assert written == []
