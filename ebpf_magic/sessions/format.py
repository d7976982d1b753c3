"""The recording file format: a tracing session saved as one self-contained, open-format file.

A recording (``.bpfrec``) is a zip archive holding

* ``manifest.json``: the format's name and version, the program (source, compiler
  flags, attach list, pid, the backend that ran it), the probes that were
  attached, host facts (kernel release, the backend's versions: BCC's, or
  libbpf's and clang's; CPU count, hostname unless left out; a cluster
  program's, one row per engine under ``hosts``), the capture's
  start and end, the program's global variables when it was saved (``globals``:
  rows of ``name``, ``section``, ``c_type`` and a JSON ``value``; recordings
  written before it have none), and what each of its functions cost (``overhead``: the
  rows of ``NAME.overhead``, or why none was measured; older recordings have none),
  its ``warnings`` and ``notes`` (each ``{"text": ...}``, with the note's ``kind`` where
  it has one; older recordings have none), and a description of every member below;
* ``streams/<i>.parquet``: every event of each stream;
* ``maps/<i>/<j>.parquet``: snapshots of each map with their timestamps
  (periodic ones from a recorder, then the final one);
* ``tables/<i>.parquet``: extra frames saved with the program by name.

The manifest is deflated; the Parquet members are stored, since Parquet
compresses its own pages (a reader refuses compressed ones). Column types are
written to the manifest, so a replay gets the same DataFrame dtypes back.
Nothing in a recording is pickled or executable. The limits below bound what
reading one may cost; :mod:`ebpf_magic.sessions.reader` enforces them.
"""

from __future__ import annotations

import re

FORMAT = "ebpf_magic.recording"  # the format's name inside every file: never changes
VERSION = 1  # the version written; readers accept 1..VERSION
MANIFEST = "manifest.json"
SUFFIX = ".bpfrec"


def stream_member(i: int) -> str:
    """The member holding the events of the ``i``-th stream."""
    return f"streams/{i}.parquet"


def map_member(i: int, j: int) -> str:
    """The member holding the ``j``-th snapshot of the ``i``-th map."""
    return f"maps/{i}/{j}.parquet"


def table_member(i: int) -> str:
    """The member holding the ``i``-th extra table."""
    return f"tables/{i}.parquet"


# Every member other than the manifest is named like this.
MEMBER = re.compile(r"(streams/\d{1,6}|tables/\d{1,6}|maps/\d{1,6}/\d{1,6})\.parquet")

# -- the manifest's column types ----------------------------------------------------
# A column is described as [name, type]; the types are numpy dtype names, times with a
# unit, "str"/"object:str"/"string", "bytes", "list", "json", "category", or one of
# pandas' extension dtypes below.

NUMERIC = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float16", "float32", "float64"}
TIMES = re.compile(r"[<>|=]?[Mm]8\[(s|ms|us|ns)\]")
TZ_TIMES = re.compile(r"datetime64\[(s|ms|us|ns), UTC\]")

# pandas extension dtypes a recording may name, restored with ``astype``
EXTENSION_DTYPES = {"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
                    "Float32", "Float64", "boolean", "string"}


def objects(kind: str) -> bool:
    """Whether a column of type ``kind`` holds Python objects once read (not numbers or times)."""
    return kind not in NUMERIC and not TIMES.fullmatch(kind)


# the scalar types a map's key or value layout may be built from: plain C data only
SCALAR_DTYPE = re.compile(r"[<>|=]?(b1|[iu][1248]|f[248]|S\d{1,6}|V\d{1,6})")
# A map's listing row (``MapView.info()``): at most these fields, of these types.
MAP_INFO = {"map": str, "kind": str, "key": str, "value": str, "entries": int,
            "max_entries": int, "full": bool}

# Host facts (the manifest's ``host``): these fields only. A cluster program's recording adds
# ``hosts``, at most MAX_HOSTS rows of exactly HOST_ROW's fields, one per engine.
HOST = {"system": str, "kernel": str, "machine": str, "hostname": str, "cpus": int,
        "bcc": str, "libbpf": str, "clang": str, "bpftrace": str}
VERSIONS = ("bcc", "libbpf", "clang", "bpftrace")  # host fields written only where they apply
# what ran a program: a backend's name, or "bpftrace" for a bpftrace program
RUNNERS = ("bcc", "libbpf", "bpftrace")
HOST_ROW = {"engine": int, "host": str, "kernel": str, "machine": str, "cpus": int,
            "state": str, "reason": str}
HOST_STATES = {"ran", "missing"}
MAX_HOSTS = 4096
MAX_HOST_FACT = 256  # characters of a host's name, kernel release or machine
MAX_HOST_REASON = 4096  # characters of why a host is missing

# A recorded global variable: a C name, a data section, its C type, and a JSON value
# (numbers, strings, lists for arrays, objects for structs); at most MAX_GLOBALS of them.
GLOBAL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
GLOBAL_SECTION = re.compile(r"\.(rodata|data|bss)(\.[A-Za-z0-9_.]{1,64})?")
MAX_GLOBALS = 4096
MAX_GLOBAL_TYPE = 1024  # characters of a C type
MAX_GLOBAL_DEPTH = 32  # arrays and structs nested in a value
MAX_GLOBAL_INT = 1 << 128  # a value's integers are within +-this (the widest C integer)

# A program's overhead when it was saved (``overhead``): ``{"rows": [...]}``, each row exactly
# OVERHEAD_ROW's fields and one of OVERHEAD_IDS (``prog_id`` on one host, ``hosts`` summed
# over a cluster's), floats None where not a number; or ``{"unavailable": why}`` where the
# kernel was not counting. Recordings written before it have none.
OVERHEAD_ROW = {"function": str, "probes": str, "runs": int, "run_time_ns": int,
                "seconds": float, "runs_per_s": float, "ns_per_run": float, "cpu_pct": float}
OVERHEAD_IDS = ("prog_id", "hosts")
MAX_OVERHEAD_ROWS = 4096
MAX_OVERHEAD_TEXT = 4096  # characters of a function's name, its probes, or why none

# A program's ``warnings`` and ``notes``: lists of ``{"text": str}`` objects, each with
# ``"kind": str`` where the message has one; at most MAX_MESSAGES of each. The writer keeps
# the first MAX_MESSAGES, each cut to MAX_MESSAGE_TEXT characters.
MESSAGE_LISTS = ("warnings", "notes")
MAX_MESSAGES = 1024
MAX_MESSAGE_TEXT = 16384  # characters of one message (a compiler's warning with its context)
MESSAGE_KIND = re.compile(r"[a-z][a-z0-9_-]{0,63}")

# -- limits on what one recording may cost to read ------------------------------------
# ``load(max_bytes=...)`` replaces MAX_BYTES, which bounds both the unpacked members and the
# decoded frames (each a separate total). Everything else a file may make the reader do is
# bounded by its own size (see docs/recordings.md).
MAX_BYTES = 1 << 30  # unpacked members in total; decoded frames in total
MAX_MEMBERS = 10_000  # members, and so frames: each member holds one frame, read once
MAX_DIRECTORY_ENTRY = 128  # central-directory bytes per member (names are under 30 bytes)
MAX_MANIFEST = 4 << 20  # the manifest, unpacked
MAX_MANIFEST_MEMORY = 64 << 20  # what the manifest may decode to, estimated before decoding
JSON_VALUE_BYTES = 72  # what one JSON value may cost decoded (an object, its slot, its key)
JSON_CHAR_BYTES = 4  # what one character of JSON text may cost decoded (a UCS-4 string)
MAX_FOOTER = 1 << 20  # a Parquet member's metadata footer
MAX_PAGES_PER_CHUNK = 1 << 14  # pages of one column chunk (pyarrow writes at most 20,000 rows
# a page, so a legitimate chunk of MAX_COLUMN_BYTES holds a few thousand)
MAX_ROW_GROUP_BYTES = 1 << 30  # one Parquet row group decoded: the unit read at once
MAX_COLUMN_BYTES = 512 << 20  # one column of one row group, as its metadata declares it
OBJECT_BYTES = 64  # what a value costs decoded as a Python object (pointer and object)
MAX_LAYOUT_FIELDS = 4096  # fields of a map's key or value layout, nested ones included
MAX_LAYOUT_ELEMENTS = 1 << 22  # scalars of a layout, array elements counted
MAX_LAYOUT_COLUMNS = 4096  # a layout with more scalars has no value columns derived from it
# manifest times are seconds since the epoch that pandas and datetime can both show
MIN_TIME = 0.0
MAX_TIME = float(2**33)  # year 2242
