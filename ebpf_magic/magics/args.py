"""One argparse-based parser for every ``%bpf SUBCOMMAND``: its errors are short UsageErrors."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from types import ModuleType
from typing import NoReturn

from IPython.core.error import UsageError

# modules of ebpf_magic.magics, one per `%bpf SUBCOMMAND`
SUBCOMMANDS = ("list", "stop", "browse", "top", "stats", "probes", "struct", "doctor", "save",
               "load", "tool", "help")


def subcommand(name: str) -> ModuleType:
    """The module of ``%bpf NAME`` (one of :data:`SUBCOMMANDS`): its USAGE, HELP, PARSER, run."""
    return importlib.import_module(f"{__package__}.{name}")


class SubcommandParser(argparse.ArgumentParser):
    """A subcommand's arguments; anything it does not understand is an error, not ignored."""

    def __init__(self, usage: str, description: str) -> None:
        # argparse %-formats usage and description (for %(prog)s)
        super().__init__(prog=" ".join(usage.split()[:2]), usage=usage.replace("%", "%%"),
                         description=description.replace("%", "%%"), add_help=False,
                         allow_abbrev=False)
        self.usage_line = usage

    def error(self, message: str) -> NoReturn:
        # a bad value names its option and says what it wants; other mistakes get the usage
        value, n = re.subn(r"^argument ([^:]+): ", r"\1 ", message)
        if n:
            raise UsageError(f"{self.prog}: {value}")
        raise UsageError(f"{self.prog}: {message}\nusage: {self.usage_line}")

    def parse(self, text: str) -> argparse.Namespace:
        """The subcommand's arguments from the rest of the line, split as a shell would."""
        try:
            words = shlex.split(text)
        except ValueError as e:
            raise UsageError(f"{self.prog}: {e}") from None
        return self.parse_args(words)

    def options(self) -> list[str]:
        """Every option string, for completion."""
        return re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", self.format_usage())


def parser(usage: str, description: str) -> SubcommandParser:
    """A parser for the subcommand whose usage line is ``usage``."""
    return SubcommandParser(usage, description)
