"""Run the notebooks live and rewrite their recordings (recordings/*.bpfrec).

Needs a machine where BPF programs load (root, or CAP_BPF+CAP_PERFMON, and BCC)::

    sudo .venv/bin/python notebooks/refresh_recordings.py            # every notebook
    sudo .venv/bin/python notebooks/refresh_recordings.py 04_latency_histograms.ipynb

Each ``%bpf save NAME`` cell writes ``recordings/NAME.bpfrec`` because this
script sets ``EBPF_MAGIC_RECORD=1``. Hostnames are left out of the recordings.

The notebooks run in this environment's plain "python3" kernel, which
``scripts/setup.sh`` makes isolated (``python -I``: nothing is imported from the
working directory), in this folder; the script refuses to run otherwise, or where
anyone but the owner may write this folder or ``recordings/``: as root it runs
the notebooks' code and writes there. (The eBPF kernel, ``ebpf-kernel``, may not
write here; it saves its recordings under its own home.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

from ebpf_magic.setup import kernelspec

HERE = Path(__file__).resolve().parent


def check() -> None:
    """SystemExit unless the kernel is isolated and only the owner may write here."""
    argv = KernelSpecManager().get_kernel_spec(kernelspec.PLAIN_NAME).argv
    if not kernelspec.is_isolated(argv):
        raise SystemExit(f"the {kernelspec.PLAIN_NAME!r} kernel runs {' '.join(argv)}, which "
                         "imports from the working directory: run scripts/setup.sh, which "
                         "makes it isolated")
    for d in (HERE, HERE / "recordings"):
        if d.stat().st_mode & 0o022:
            raise SystemExit(f"{d} may be written by others than its owner: "
                             f"chmod go-w {d} (scripts/setup.sh does)")


def refresh(notebook: Path) -> None:
    book = nbformat.read(notebook, as_version=4)
    NotebookClient(book, timeout=300, kernel_name=kernelspec.PLAIN_NAME,
                   resources={"metadata": {"path": str(HERE)}}).execute()


def main(names: list[str]) -> None:
    check()
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
