"""Run the notebooks live and rewrite their recordings (recordings/*.bpfrec).

Needs a machine where BPF programs load (root, or CAP_BPF+CAP_PERFMON, and BCC)::

    python notebooks/refresh_recordings.py              # every notebook
    python notebooks/refresh_recordings.py 04_latency_histograms.ipynb

Each ``%bpf save NAME`` cell writes ``recordings/NAME.bpfrec`` because this
script sets ``EBPF_MAGIC_RECORD=1``. Hostnames are left out of the recordings.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def refresh(notebook: Path) -> None:
    book = nbformat.read(notebook, as_version=4)
    NotebookClient(book, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(HERE)}}).execute()


def main(names: list[str]) -> None:
    os.environ["EBPF_MAGIC_RECORD"] = "1"
    os.environ["EBPF_MAGIC_RECORDINGS"] = str(HERE / "recordings")
    os.environ["EBPF_MAGIC_HOSTNAME"] = "0"
    for notebook in [HERE / n for n in names] or sorted(HERE.glob("[0-9]*.ipynb")):
        print(f"recording {notebook.name}", flush=True)
        refresh(notebook)
    for rec in sorted((HERE / "recordings").glob("*.bpfrec")):
        print(f"{rec.name:24} {rec.stat().st_size:>8} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
