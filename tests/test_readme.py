"""The README's quick-start commands work from a user's shell with sudo and from a root shell."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_each_command_is_given_with_and_without_sudo():
    rows = [line for line in README.read_text().splitlines()
            if line.startswith("| **") and "./run " in line]
    assert rows, "the quick-start table is gone"
    for row in rows:
        with_sudo = re.findall(r"`sudo (\./run [^`]+)`", row)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert with_sudo and cells[-1] == f"`{with_sudo[0]}`", row
