"""Bounded storage of decoded events: a numpy ring, optionally spilling to Parquet.

Events are kept as structured numpy records (about the C struct's size each),
never as Python objects. When ``max_rows`` are held, the oldest are dropped and
counted, or, with a spill file, written to Parquet first so nothing is lost.

Rows are numbered in the order they were appended; row ``i`` lives in slot
``i % max_rows``. A reader may copy rows without holding the writer back
(:meth:`EventStore.held`, :meth:`EventStore.copy`, :meth:`EventStore.intact_from`):
rows the writer overwrote meanwhile are recognised by their number and cut.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ebpf_magic.internal import files


class EventStore:
    """The last ``max_rows`` records of one dtype, oldest first.

    With ``spill``, records beyond ``max_rows`` are written there instead of dropped.
    """

    def __init__(self, dtype: np.dtype, max_rows: int, spill: ParquetSpill | None = None) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.dtype = dtype
        self.max_rows = int(max_rows)
        self.dropped = 0
        self.spilled = 0
        self.cleared = 0
        # calloc'ed: the kernel backs pages only as rows are written
        self._buf = np.zeros(self.max_rows, dtype)
        self._head = 0  # number of the next row appended
        self._writing = 0  # rows below this number are written or being written
        self._count = 0
        self._spill = spill

    def __len__(self) -> int:
        return self._count

    def spill_to(self, path: str | Path, frame: Callable[[np.ndarray], pd.DataFrame]) -> None:
        """Write records that would be dropped to a Parquet file at ``path``, via ``frame``."""
        self._spill = ParquetSpill(Path(path), frame)

    def append(self, records: np.ndarray) -> None:
        n = len(records)
        if n == 0:
            return
        cap = len(self._buf)
        if n >= cap:
            self._evict(self._count)
            self._evict_records(records[:n - cap])
            records, n = records[n - cap:], cap
        overflow = self._count + n - cap
        if overflow > 0:
            spill_more = cap // 4 if self._spill is not None else 0
            self._evict(min(self._count, max(overflow, spill_more)))
        self._writing = self._head + n
        end = self._head % cap
        first = min(n, cap - end)
        self._buf[end:end + first] = records[:first]
        self._buf[:n - first] = records[first:]
        self._head += n
        self._count += n

    def _evict(self, k: int) -> None:
        """Remove the ``k`` oldest records (spilling them when a spill file is set)."""
        if k <= 0:
            return
        if self._spill is not None:
            lo = self._head - self._count
            self._spill.write(self.copy(lo, lo + k))
            self.spilled += k
        else:
            self.dropped += k
        self._count -= k

    def _evict_records(self, records: np.ndarray) -> None:
        if not len(records):
            return
        if self._spill is not None:
            self._spill.write(records)
            self.spilled += len(records)
        else:
            self.dropped += len(records)

    def held(self, last: int | None = None) -> tuple[int, int]:
        """Numbers ``(lo, hi)`` of the rows held (only the ``last`` newest if given)."""
        count = self._count if last is None else min(self._count, max(last, 0))
        return self._head - count, self._head

    def copy(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo`` to ``hi`` (numbers from :meth:`held`), copied byte for byte."""
        cap, size = len(self._buf), self.dtype.itemsize
        flat = self._buf.view(np.uint8)
        out = np.empty((hi - lo) * size, np.uint8)
        start = lo % cap
        first = min(hi - lo, cap - start)
        out[:first * size] = flat[start * size:(start + first) * size]
        out[first * size:] = flat[:(hi - lo - first) * size]
        return out.view(self.dtype)

    def intact_from(self) -> int:
        """The number of the oldest row no append has overwritten or is overwriting."""
        return self._writing - len(self._buf)

    def snapshot(self, last: int | None = None) -> np.ndarray:
        """A copy of the held records (only the ``last`` newest if given)."""
        return self.copy(*self.held(last))

    def clear(self) -> None:
        """Forget the rows held; they are counted in ``cleared``."""
        self.cleared += self._count
        self._count = 0

    def counters_from(self, other: EventStore) -> None:
        """Continue ``other``'s counters (dropped, spilled, cleared) in this store."""
        self.dropped, self.spilled, self.cleared = other.dropped, other.spilled, other.cleared

    def resized(self, max_rows: int) -> EventStore:
        """A store of ``max_rows`` taking over this one's rows, counters and spill file.

        Rows that no longer fit are dropped (or spilled) and counted.
        """
        store = EventStore(self.dtype, max_rows, self._spill)
        self._spill = None
        store.counters_from(self)
        store.append(self.snapshot())
        return store

    def close(self) -> None:
        """Complete the spill file, if there is one."""
        if self._spill is not None:
            self._spill.close()


class ParquetSpill:
    """A Parquet file that records are appended to, as rows of ``frame(records)``.

    The file (and its directory) is created with the first write.
    """

    def __init__(self, path: Path, frame: Callable[[np.ndarray], pd.DataFrame]) -> None:
        self.path = path
        self._frame = frame
        self._writer = None
        self._file: files.AtomicFile | None = None

    def write(self, records: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(self._frame(records), preserve_index=False)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = files.AtomicFile(self.path)
            self._writer = pq.ParquetWriter(self._file.file, table.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        """Complete the file and move it into place at ``path``."""
        if self._writer is not None:
            writer, out, self._writer, self._file = self._writer, self._file, None, None
            try:
                writer.close()
            except BaseException:
                out.discard()
                raise
            out.commit()
