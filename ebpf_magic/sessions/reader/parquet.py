"""Parquet members: what decoding one costs, bounded from its own bytes before it is paid.

Before pyarrow decodes anything, the footer and every page header are read here
(:mod:`.thrift`; pyarrow's accessors for column chunk metadata abort the whole
process on some malformed footers) and checked:

* the footer is at most :data:`.format.MAX_FOOTER` bytes, and was not written by
  parquet-mr: for files whose footer names an old parquet-mr, pyarrow reads up
  to 100 bytes past every column chunk (its PARQUET-816 workaround), where pages
  no walk of the chunk sees could lie;
* every column chunk lies inside the file and no two overlap, so walking all of
  them reads each byte of the file at most once;
* every chunk's pages, walked header by header (at most
  :data:`.format.MAX_PAGES_PER_CHUNK`; data pages each holding at least one
  value, one dictionary page at most and first), hold exactly the values its
  metadata declares: pyarrow stops reading a chunk once it has that many, so it
  reads exactly the pages walked here;
* row groups decoded at a conservative width per value, plus their pages'
  declared sizes, fit the budget.

Then row groups are decoded one at a time and their decoded size measured and
charged; string columns whose pages index a dictionary are read
dictionary-encoded, so one row group of repeated long strings is measured, not
materialized, before it expands. ``json`` columns are charged by what their
text may decode to (``[[],[],...]`` is 24 times its size), from the dictionary
where there is one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from ebpf_magic.errors import ReplayError
from ebpf_magic.sessions import format as fmt
from ebpf_magic.sessions.reader.budget import Budget, too_big
from ebpf_magic.sessions.reader.thrift import Thrift

_PHYSICAL = {0: "BOOLEAN", 1: "INT32", 2: "INT64", 3: "INT96", 4: "FLOAT", 5: "DOUBLE",
             6: "BYTE_ARRAY", 7: "FIXED_LEN_BYTE_ARRAY"}
# bytes a value takes decoded, at most (FIXED_LEN_BYTE_ARRAY: its length)
_WIDTH = {"BOOLEAN": 8, "INT32": 8, "INT64": 8, "INT96": 12, "FLOAT": 8, "DOUBLE": 8,
          "BYTE_ARRAY": 8}
_DATA_PAGES = {0: 5, 3: 8}  # page type -> the header field describing a data page
_DICTIONARY_PAGE = 2
_PLAIN_ENCODINGS = {0, 3, 4, 5, 6, 9}  # value encodings that do not index a dictionary
_DELTA_BYTE_ARRAY = 7
_MAX_SCHEMA_DEPTH = 64
# writers whose files pyarrow reads past the end of column chunks (PARQUET-816)
READS_PAST_CHUNKS = ("parquet-mr",)


@dataclass
class Leaf:
    """A leaf column of the schema: the top-level column it belongs to, its physical type,
    a fixed-length value's bytes, and its maximum repetition level."""

    top: int
    physical: str
    length: int
    repeated: int


@dataclass
class Chunk:
    """One column chunk's metadata, by Parquet's ColumnMetaData."""

    values: int
    uncompressed: int
    compressed: int
    start: int  # its first page: the dictionary page if before the data pages


@dataclass
class Footer:
    """What a Parquet footer says: its writer, rows, columns and row groups."""

    created_by: str
    rows: int
    tops: int
    leaves: list[Leaf]
    groups: list[tuple[int, list[Chunk]]]  # (rows, a chunk per leaf) of each row group


@dataclass
class Pages:
    """What a column chunk's pages hold, from their own headers."""

    count: int = 0
    values: int = 0  # values in data pages
    size: int = 0  # uncompressed bytes of all pages
    looked_up: int = 0  # values of data pages that index the dictionary
    entries: int = 0  # values of the dictionary page


def footer(data: bytes, where: str) -> Footer:
    """The footer of the Parquet file ``data``, checked for what the bounds rely on."""
    if len(data) < 12 or data[-4:] != b"PAR1" or data[:4] != b"PAR1":
        raise ReplayError(f"{where} is not a Parquet file")
    size = int.from_bytes(data[-8:-4], "little")
    if size > fmt.MAX_FOOTER:
        raise ReplayError(f"{where} has a {size:,}-byte metadata footer, more than a "
                          f"recording writes ({fmt.MAX_FOOTER:,})")
    end = len(data) - 8
    if size > end - 4:
        raise ValueError("the metadata footer is longer than the file")
    meta = Thrift(data, end - size, end).struct()
    written = meta.get(6)
    created_by = written.decode("utf-8", "replace") if isinstance(written, bytes) else ""
    if any(writer in created_by.lower() for writer in READS_PAST_CHUNKS):
        raise ReplayError(f"{where} was written by {created_by[:60]}, whose files pyarrow "
                          "reads past their column chunks; recordings are written by pyarrow")
    rows = meta.get(3)
    if not isinstance(rows, int) or rows < 0:
        raise ValueError("the footer has no row count")
    tops, leaves = _leaves(meta.get(2))
    groups = []
    for group in meta.get(4) or []:
        if not isinstance(group, dict) or not isinstance(group.get(3), int):
            raise ValueError("a row group has no row count")
        chunks = [_chunk(c) for c in group.get(1) or []]
        if len(chunks) != len(leaves):
            raise ValueError("a row group's columns are not the schema's")
        groups.append((group[3], chunks))
    _no_overlaps(groups, end - size, where)
    return Footer(created_by, rows, tops, leaves, groups)


def _leaves(schema: Any) -> tuple[int, list[Leaf]]:
    """The top-level column count and the leaf columns of a flattened schema."""
    if not isinstance(schema, list) or not schema or not isinstance(schema[0], dict):
        raise ValueError("the footer has no schema")
    out: list[Leaf] = []

    def visit(pos: int, top: int, repeated: int, depth: int) -> int:
        if depth > _MAX_SCHEMA_DEPTH or pos >= len(schema) or not isinstance(schema[pos], dict):
            raise ValueError("the schema's tree is malformed")
        element = schema[pos]
        repeated += element.get(3) == 2  # REPEATED
        children = element.get(5)
        if isinstance(children, int) and children > 0:
            pos += 1
            for _ in range(children):
                pos = visit(pos, top, repeated, depth + 1)
            return pos
        length = element.get(2)
        out.append(Leaf(top, _PHYSICAL.get(element.get(1), "?"),
                        length if isinstance(length, int) else 0, repeated))
        return pos + 1

    tops = schema[0].get(5)
    if not isinstance(tops, int) or tops < 0:
        raise ValueError("the schema's root has no columns")
    pos = 1
    for top in range(tops):
        pos = visit(pos, top, 0, 0)
    if pos != len(schema):
        raise ValueError("the schema's tree is malformed")
    return tops, out


def _chunk(column: Any) -> Chunk:
    meta = column.get(3) if isinstance(column, dict) else None
    if not (isinstance(meta, dict) and all(isinstance(meta.get(k), int) for k in (5, 6, 7, 9))):
        raise ValueError("a column chunk has no readable metadata")
    if column.get(1) is not None:
        raise ValueError("a column chunk lives in another file")
    start = meta[9]
    dictionary = meta.get(11)
    if isinstance(dictionary, int) and 0 < dictionary < start:
        start = dictionary
    if min(meta[5], meta[6], meta[7]) < 0:
        raise ValueError("a column chunk declares a negative size")
    return Chunk(meta[5], meta[6], meta[7], start)


def _no_overlaps(groups: list[tuple[int, list[Chunk]]], footer_start: int,
                 where: str) -> None:
    """Every column chunk inside the file's pages, none overlapping another."""
    ranges = []
    for g, (_, chunks) in enumerate(groups):
        for chunk in chunks:
            if chunk.values == 0:
                continue  # nothing is read of a chunk without values
            end = chunk.start + chunk.compressed
            if not 4 <= chunk.start <= end <= footer_start:
                raise ValueError(f"a column chunk of row group {g} lies outside the file")
            ranges.append((chunk.start, end, g))
    ranges.sort()
    for (_, end, g), (start, _, h) in itertools.pairwise(ranges):
        if start < end:
            raise ReplayError(f"{where} is inconsistent: column chunks of row groups "
                              f"{min(g, h)} and {max(g, h)} overlap")


def pages(data: bytes, chunk: Chunk) -> Pages:
    """The pages of a column chunk, from their own headers (none for a chunk without values).

    pyarrow decodes whole pages, whatever the column's metadata says, and reads
    a chunk's pages until it has the values the metadata declares: these are
    the pages it reads, and the numbers that bound what decoding them costs.
    """
    out = Pages()
    if chunk.values == 0:
        return out
    end = chunk.start + chunk.compressed
    reader = Thrift(data, chunk.start, end)
    while reader.pos < end:
        if out.count >= fmt.MAX_PAGES_PER_CHUNK:
            raise ValueError(f"a column chunk has more than {fmt.MAX_PAGES_PER_CHUNK:,} pages")
        header = reader.struct()
        out.count += 1
        uncompressed, compressed = header.get(2), header.get(3)
        if not (isinstance(uncompressed, int) and isinstance(compressed, int)
                and uncompressed >= 0):
            raise ValueError("a page header has no valid sizes")
        kind = header.get(1)
        if kind in _DATA_PAGES:
            described = header.get(_DATA_PAGES[kind])
            count = described.get(1) if isinstance(described, dict) else None
            if not isinstance(count, int) or count < 1:
                raise ValueError("a data page holds no values")
            out.values += count
            if out.values > chunk.values:
                raise ValueError(f"a column chunk's pages hold more than the {chunk.values:,} "
                                 "values it declares")
            encoding = described.get(2 if kind == 0 else 4)
            if encoding == _DELTA_BYTE_ARRAY:
                raise ValueError("a page is DELTA_BYTE_ARRAY-encoded, whose values share "
                                 "prefixes without bound; recordings never use it")
            if encoding not in _PLAIN_ENCODINGS:
                out.looked_up += count
        elif kind == _DICTIONARY_PAGE and out.count == 1 and isinstance(header.get(7), dict):
            entries = header[7].get(1)
            if not isinstance(entries, int) or entries < 0:
                raise ValueError("a dictionary page has no valid size")
            out.entries = entries
        else:
            raise ValueError(f"a column chunk holds a page of type {kind} where recordings "
                             "have data pages after at most one dictionary page")
        out.size += uncompressed
        reader.skip(compressed)
    if out.values != chunk.values:
        raise ValueError(f"a column chunk's pages hold {out.values:,} values, not the "
                         f"{chunk.values:,} it declares")
    return out


def read(data: bytes, columns: list[tuple[str, str]], rows: int, budget: Budget,
         where: str) -> Any:
    """Parquet member ``data`` (of ``where``) as an Arrow table, its decoded size charged to
    ``budget``.

    ``columns`` (``(name, type)``) and ``rows`` are what the manifest says it
    holds. A column of a type read as Python objects costs
    :data:`.format.OBJECT_BYTES` more a value, a ``json`` one what its text may
    decode to (:func:`json_cost`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [name for name, _ in columns]
    objects = [fmt.objects(kind) for _, kind in columns]
    meta = footer(data, where)
    if meta.rows != rows or meta.tops != len(names):
        raise ReplayError(f"{where} does not match the manifest (its rows or columns differ)")
    group_limit = min(fmt.MAX_ROW_GROUP_BYTES, budget.decoded)
    column_limit = min(fmt.MAX_COLUMN_BYTES, budget.decoded)
    total = 0
    expanding: set[int] = set()  # string columns whose pages index a dictionary
    for g, (group_rows, chunks) in enumerate(meta.groups):
        estimate = 0
        for j, (leaf, chunk) in enumerate(zip(meta.leaves, chunks, strict=True)):
            if leaf.repeated == 0 and chunk.values != group_rows:
                raise ReplayError(f"{where} is inconsistent: a column of row group {g} holds "
                                  f"{chunk.values} values for {group_rows} rows")
            walked = pages(data, chunk)
            declared = max(chunk.uncompressed, walked.size)
            if declared > column_limit:
                raise too_big(where, f"column {j} of row group {g} declares", declared,
                              column_limit)
            width = leaf.length if leaf.physical == "FIXED_LEN_BYTE_ARRAY" else \
                _WIDTH.get(leaf.physical, 8)
            per_value = width + (fmt.OBJECT_BYTES if objects[leaf.top] else 0)
            estimate += max(chunk.values * per_value, declared) + walked.entries * 8
            if leaf.physical == "BYTE_ARRAY" and walked.looked_up:
                expanding.add(j)
        if estimate > group_limit:
            raise too_big(where, f"row group {g} would decode to", estimate, group_limit)
        total += estimate
        if total > budget.decoded:
            raise too_big(where, "its metadata declares at least", total, budget.decoded)

    pf = pq.ParquetFile(pa.BufferReader(data), read_dictionary=sorted(expanding),
                        thrift_string_size_limit=fmt.MAX_FOOTER,
                        thrift_container_size_limit=1 << 16)
    _same_as_pyarrow(meta, pf, names, where)
    parts = []
    spent = 0
    for g in range(len(meta.groups)):
        part = pf.read_row_group(g, use_threads=False)
        if part.num_rows != meta.groups[g][0]:
            raise ReplayError(f"{where} is inconsistent: row group {g} holds {part.num_rows} "
                              f"rows, not the {meta.groups[g][0]} it declares")
        cost = json = 0
        for i, column in enumerate(part.columns):
            for chunk in column.chunks:
                size, count = _decoded_size(chunk)
                cost += 2 * size + count * fmt.OBJECT_BYTES if objects[i] else size
                json += json_cost(chunk) if columns[i][1] == "json" else 0
        cost += json
        spent += cost
        decodes = "would decode, its json parsed, to" if json else "decodes to"
        if cost > group_limit:
            raise too_big(where, f"row group {g} {decodes}", cost, group_limit)
        if spent > budget.decoded:
            raise too_big(where, f"it {decodes} at least", spent, budget.decoded)
        parts.append(pa.Table.from_arrays([_plain(c) for c in part.columns],
                                          names=part.column_names))
    budget.decoded -= spent
    if not parts:
        return pa.table({n: pa.array([], _plain_type(f.type)) for n, f in
                         zip(names, pf.schema_arrow, strict=True)})
    return pa.concat_tables(parts)


def _same_as_pyarrow(meta: Footer, pf: Any, names: list[str], where: str) -> None:
    """pyarrow reads the footer as :func:`footer` did: the same rows, columns, row groups."""
    theirs = pf.metadata
    if theirs.num_rows != meta.rows or pf.schema_arrow.names != names:
        raise ReplayError(f"{where} does not match the manifest (its rows or columns differ)")
    same = (theirs.num_columns == len(meta.leaves)
            and theirs.num_row_groups == len(meta.groups)
            and all(theirs.row_group(g).num_rows == n for g, (n, _) in enumerate(meta.groups)))
    for j, leaf in enumerate(meta.leaves if same else []):
        column = pf.schema.column(j)
        same = same and (column.physical_type, column.max_repetition_level) == (
            leaf.physical, leaf.repeated) and (leaf.physical != "FIXED_LEN_BYTE_ARRAY"
                                               or column.length == leaf.length)
    if not same:
        raise ReplayError(f"{where} is inconsistent: its row groups cannot be read")


def json_cost(arr: Any) -> int:
    """At most what the JSON texts of ``arr`` (strings, maybe dictionary-encoded) decode to as
    Python objects, without expanding its dictionary: a value per text and one per
    ``, : [ {`` in it (every JSON value but the first follows one of them), each
    :data:`.format.JSON_VALUE_BYTES`, and :data:`.format.JSON_CHAR_BYTES` a character."""
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = arr.dictionary if pa.types.is_dictionary(arr.type) else arr
    if pa.types.is_null(texts.type) or len(texts) == 0:
        return 0
    cost = pc.multiply(pc.binary_length(texts).cast(pa.int64()), fmt.JSON_CHAR_BYTES)
    for c in ",:[{":
        found = pc.count_substring(texts, c).cast(pa.int64())
        cost = pc.add(cost, pc.multiply(found, fmt.JSON_VALUE_BYTES))
    cost = pc.add(cost, fmt.JSON_VALUE_BYTES)
    if pa.types.is_dictionary(arr.type):
        cost = pc.take(cost, arr.indices)
    return pc.sum(cost).as_py() or 0


def _decoded_size(arr: Any) -> tuple[int, int]:
    """``(bytes, values)`` of an Arrow array with its dictionaries expanded, without expanding."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = arr.type
    if pa.types.is_dictionary(t):
        lengths = pc.binary_length(arr.dictionary)
        data = pc.sum(pc.take(lengths, arr.indices)).as_py() or 0
        return arr.indices.nbytes + (len(arr) + 1) * 8 + data, len(arr)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        size, count = _decoded_size(arr.values)
        return size + (len(arr) + 1) * 8, count + len(arr)
    if pa.types.is_struct(t):
        sizes = [_decoded_size(arr.field(i)) for i in range(t.num_fields)]
        return sum(s for s, _ in sizes), sum(c for _, c in sizes) + len(arr)
    return arr.nbytes, len(arr)


def _plain_type(t: Any) -> Any:
    """``t`` with its dictionary-encoded parts as their value types."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _plain_type(t.value_type)
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_plain_type(t.value_type)))
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_plain_type(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_plain_type(t.field(i).type))
                          for i in range(t.num_fields)])
    return t


def _plain(column: Any) -> Any:
    plain = _plain_type(column.type)
    return column if plain == column.type else column.cast(plain)
