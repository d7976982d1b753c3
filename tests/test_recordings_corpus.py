"""Every hostile recording of the corpus costs under a second and 100 MB to refuse (or load).

``recordings_corpus/`` holds recordings crafted so that a reader which pays
before it checks spends gigabytes or minutes on a file of a few KB (see
``recordings_corpus/build.py``, which wrote them). Each is loaded in a fresh
interpreter, the way a user first looks at one (load, announce, every frame,
every map's value columns), with the CPU time and the peak memory over the
child's own baseline measured there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hostile import load_in_child

CORPUS = Path(__file__).resolve().parent / "recordings_corpus"
CPU_SECONDS = 1.0
MEMORY = 100 << 20

# name -> (max_bytes the load is given, what the error says; None: it loads)
EXPECTED = {
    "bzip2_member": (None, r"bzip2_member\.bpfrec: streams/0\.parquet is compressed with "
                           r"bzip2; a recording's Parquet members are stored"),
    "lzma_member": (None, r"streams/0\.parquet is compressed with lzma"),
    "zero_size_pages": (None, r"streams/0\.parquet is compressed with deflate"),
    "parquet_mr_816": (10_000_000, r"parquet_mr_816\.bpfrec:streams/0\.parquet was written by "
                                   r"parquet-mr version 1\.2\.8"),
    "overlapping_row_groups": (None, r"overlapping_row_groups\.bpfrec:streams/0\.parquet is "
                                     r"inconsistent: column chunks of row groups 0 and 1 "
                                     r"overlap"),
    "include_regex": (None, None),
    "json_column": (200_000_000, r"json_column\.bpfrec:streams/0\.parquet: row group 0 would "
                                 r"decode, its json parsed, to [\d,]+ bytes, over the limit "
                                 r"of 200,000,000 bytes"),
    "layout_2gib": (None, r"malformed recording: maps\[0\]\.value_dtype has 8,388,608 "
                          r"elements, more than a map's key or value holds \(4,194,304\)"),
    "many_frames": (None, r"malformed recording: maps\[0\]\.snapshots\[1\] names "
                          r"maps/0/0\.parquet, which another frame names too"),
    "manifest_16mb": (None, r"manifest_16mb\.bpfrec: manifest\.json unpacks to [\d,]+ bytes, "
                            r"more than a manifest may \(4,194,304\)"),
    "manifest_values": (None, r"manifest_values\.bpfrec: manifest\.json would decode to at "
                              r"least [\d,]+ bytes, more than a manifest may"),
    "many_notes": (None, r"malformed recording: notes lists 150,000 messages, more than a "
                         r"recording holds \(1,024\)"),
}


def test_the_corpus_is_what_the_test_expects():
    assert sorted(p.stem for p in CORPUS.glob("*.bpfrec")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_recording_is_cheap(name: str) -> None:
    path = CORPUS / f"{name}.bpfrec"
    max_bytes, message = EXPECTED[name]
    result = load_in_child(path, max_bytes, timeout=120)
    if message is None:
        assert result["error"] is None, result["error"]
    else:
        assert result["error"] is not None, "the crafted file loaded"
        assert re.search(message, result["error"]), result["error"]
        assert len(result["error"]) < 400
    assert result["cpu"] < CPU_SECONDS, f"{result['cpu']:.2f} s of CPU for {path.name}"
    assert result["memory"] < MEMORY, f"{result['memory'] >> 20} MB for {path.name}"
