"""Just enough of Thrift's compact protocol to read Parquet footers and page headers.

Every read is bounded by the bytes it is given: a value never runs past ``end``,
a list is never longer than the bytes left, structs nest at most 16 deep, so
parsing costs time and memory linear in the bytes parsed. Malformed input is a
:class:`ValueError`.
"""

from __future__ import annotations

from typing import Any


class Thrift:
    """A reader of ``data[pos:end]``."""

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise ValueError("Parquet metadata runs past its end")
        self.pos += 1
        return self.data[self.pos - 1]

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise ValueError("Parquet metadata runs past its end")
        self.pos += n

    def varint(self) -> int:
        value = shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ValueError("Parquet metadata holds an overlong integer")

    def int(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def struct(self, depth: int = 0) -> dict[int, Any]:
        """A struct's integer, binary, struct and list fields by id (other values skipped)."""
        if depth > 16:
            raise ValueError("Parquet metadata nests too deeply")
        fields: dict[int, Any] = {}
        last = 0
        while (head := self.byte()) & 0x0F:
            last = last + (head >> 4) if head >> 4 else self.int()
            fields[last] = self.value(head & 0x0F, depth)
        return fields

    def value(self, kind: int, depth: int) -> Any:
        if kind in (1, 2):  # a boolean, in the field header itself
            return kind == 1
        if kind in (4, 5, 6):
            return self.int()
        if kind == 12:
            return self.struct(depth + 1)
        if kind == 8:  # binary (and string)
            n = self.varint()
            self.skip(n)
            return self.data[self.pos - n:self.pos]
        if kind in (3, 7):  # byte, double
            self.skip(1 if kind == 3 else 8)
        elif kind in (9, 10):  # list, set
            head = self.byte()
            count = self.varint() if head >> 4 == 15 else head >> 4
            return self.elements(count, [head & 0x0F], depth)
        elif kind == 11:  # map
            count = self.varint()
            if count:
                types = self.byte()
                self.elements(count, [types >> 4, types & 0x0F], depth)
        else:
            raise ValueError(f"Parquet metadata holds an unknown Thrift type {kind}")
        return None

    def elements(self, count: int, kinds: list[int], depth: int) -> list[Any]:
        if count > self.end - self.pos:  # every element takes at least a byte
            raise ValueError("Parquet metadata holds a list longer than itself")
        out = []
        for _ in range(count):
            for kind in kinds:
                if kind in (1, 2):
                    self.skip(1)
                else:
                    out.append(self.value(kind, depth + 1))
        return out
