"""A Jupyter server that offers the eBPF kernel and nothing that runs as root.

A Jupyter server started by root (``sudo ./run lab``) holds every right root has, and so
does whoever controls it: anyone with its token, and any script in the browser page of
whoever uses it. A cell in the eBPF kernel can become either: its output is rendered in
that page (``display(Javascript(...))``, HTML, widgets), and its BPF rights read any
process's memory and any packet, the token included. So what the server offers must be
nothing a token turns into root:

* only the kernelspec :data:`~ebpf_magic.setup.kernelspec.KERNEL_NAME` is listed **or
  started** (:class:`KernelSpecs`: jupyter_client's ``allowed_kernelspecs`` only filters
  the list, and it starts ipykernel's stock "python3" even where none is installed);
* no terminals (each would be a root shell), no server extension that starts
  processes on request (:data:`SERVER_EXTENSIONS_OFF`), and no extension manager that
  installs packages;
* it serves a working copy of the notebooks (:mod:`.workspace`), never the checkout,
  whose notebooks root runs;
* the environment's stock "python3" kernelspec is replaced by an isolated one
  (:func:`~ebpf_magic.setup.kernelspec.plain_spec`), for root's own tools that start
  kernels outside the server (nbclient, ``jupyter console``).

:func:`install` writes this into ``PREFIX/etc/jupyter/jupyter_server_config.json``,
which no package owns: reinstalling ipykernel (which puts its stock kernelspec back)
changes nothing the server offers. ``scripts/setup.sh`` and ``scripts/lab.sh`` run it
(``python -m ebpf_magic install-lab``, for this environment).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel

from ebpf_magic.internal import files
from ebpf_magic.setup import kernelspec

CONFIG_FILE = Path("etc", "jupyter", "jupyter_server_config.json")
PAGE_CONFIG_FILE = Path("etc", "jupyter", "labconfig", "page_config.json")
SERVER_EXTENSIONS_OFF = ("ipyparallel", "jupyter_lsp")
"""Server extensions that start processes as the server's user on request: ipyparallel's
starts clusters (engines as root, unless their profile runs them through
:mod:`ebpf_magic.setup.engine_launcher`), jupyter-lsp language servers."""
LAB_EXTENSIONS_OFF = ("ipyparallel-labextension",)
"""JupyterLab's side of those (without its server side it stops the page loading)."""


class KernelSpecs(KernelSpecManager):
    """Kernelspecs whose ``allowed_kernelspecs`` bounds what is started, not only listed."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if self.allowed_kernelspecs and kernel_name.lower() not in {
                k.lower() for k in self.allowed_kernelspecs}:
            raise NoSuchKernel(kernel_name)
        return super().get_kernel_spec(kernel_name)


def config(kernel: str = kernelspec.KERNEL_NAME) -> dict:
    """The server configuration that offers ``kernel`` alone and nothing that runs as root."""
    return {
        "ServerApp": {"kernel_spec_manager_class": f"{__name__}.KernelSpecs",
                      "terminals_enabled": False,
                      "jpserver_extensions": dict.fromkeys(SERVER_EXTENSIONS_OFF, False)},
        "KernelSpecManager": {"allowed_kernelspecs": [kernel], "ensure_native_kernel": False},
        "MappingKernelManager": {"default_kernel_name": kernel},
        # JupyterLab's extension manager would pip-install packages as the server's user
        "LabApp": {"extension_manager": "readonly"},
    }


def install(prefix: str, kernel: str = kernelspec.KERNEL_NAME) -> Path:
    """Set up the Jupyter server of the environment at ``prefix`` (see the module's
    docstring); return the configuration file written.

    Installs the eBPF kernelspec and the isolated plain one, and writes :func:`config`
    and JupyterLab's :data:`LAB_EXTENSIONS_OFF`: settings of the same names in existing
    files are replaced, others stay.
    """
    kernelspec.install(kernel, prefix=prefix)
    kernelspec.install(kernelspec.PLAIN_NAME, prefix=prefix, contents=kernelspec.plain_spec())
    _merge(Path(prefix) / PAGE_CONFIG_FILE,
           {"disabledExtensions": dict.fromkeys(LAB_EXTENSIONS_OFF, True)})
    return _merge(Path(prefix) / CONFIG_FILE, config(kernel))


def _merge(path: Path, settings: dict) -> Path:
    """Update the sections of the JSON file ``path`` with ``settings``; return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        merged = json.loads(path.read_text())
    except FileNotFoundError:
        merged = {}
    for section, values in settings.items():
        merged.setdefault(section, {}).update(values)
    return files.write(path, json.dumps(merged, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m ebpf_magic install-lab``."""
    parser = argparse.ArgumentParser(
        prog="python -m ebpf_magic install-lab",
        description="Set up this environment's Jupyter server to offer the eBPF kernel "
        "alone, no terminals and no process started on request, and make its stock "
        "Python 3 kernel isolated (what ./run lab uses).")
    parser.add_argument("--prefix", default=sys.prefix,
                        help=f"the environment (default: this one, {sys.prefix})")
    args = parser.parse_args(argv)
    path = install(args.prefix)
    print(f"Jupyter servers of {args.prefix} offer only {kernelspec.KERNEL_NAME!r}: {path}")
    return 0
