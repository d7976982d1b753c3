"""Modules keep answering to the names they had before the package was laid out in layers."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from ebpf_magic import moved

# Every module and package of ebpf_magic before it was laid out in layers.
BEFORE = ("backend btf cache ctext discover doctor dtypes errors eventframe eventstore "
          "globalvars histograms kernel kernelspec launcher link magics maps perfbuf plots "
          "probes program recording replay ringbuf session source stacks streams streamview "
          "suggest symbols sysbpf timebase uninstall_kernel widgets").split()


@pytest.mark.parametrize("old", BEFORE)
def test_every_name_from_before_still_imports(old):
    importlib.import_module(f"ebpf_magic.{old}")


def test_the_old_kernel_module_s_names_are_the_kernel_package_s():
    from ebpf_magic import kernel
    from ebpf_magic.kernel import host

    assert kernel.has_bpf_rights is host.has_bpf_rights and kernel.CAP_BPF == host.CAP_BPF
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kernel.nope  # noqa: B018


@pytest.mark.parametrize("old", sorted(moved.MOVED))
def test_an_old_name_is_the_same_module_object(old):
    now = importlib.import_module(f"ebpf_magic.{moved.MOVED[old]}")
    assert importlib.import_module(f"ebpf_magic.{old}") is now
    assert now.__spec__.name == now.__name__  # the alias did not take the module's spec


def test_notebook_imports_by_old_names_work():
    from ebpf_magic.recording import record_snapshots

    from ebpf_magic import plots, replay
    from ebpf_magic.present import plots as present_plots
    from ebpf_magic.sessions import recorder

    assert plots is present_plots and callable(replay.load)
    assert record_snapshots is recorder.record_snapshots


def test_a_submodule_of_a_moved_package_names_its_new_place_and_disturbs_nothing():
    from ebpf_magic.kernel import link

    with pytest.raises(ModuleNotFoundError,
                       match="ebpf_magic.link.tracepoint is now ebpf_magic.kernel.link.tracepoint"):
        importlib.import_module("ebpf_magic.link.tracepoint")
    assert callable(link.tracepoint)  # the package's function, not its module
    assert importlib.import_module("ebpf_magic.link") is link


def test_python_m_with_an_old_name_runs_the_module_under_its_new_one():
    """Kernelspecs installed before the move start ``python -m ebpf_magic.launcher``."""
    code = ("import runpy, sys; sys.argv = ['x']; "
            "g = runpy.run_module('ebpf_magic.launcher', run_name='not_main'); "
            "print(g['__file__'], 'writable_code_paths' in g)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0].endswith("ebpf_magic/setup/launcher.py") and out[1] == "True"


def test_names_that_never_moved_are_not_aliased():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("ebpf_magic.no_such_module")
    assert moved.new_name("ebpf_magic") is None and moved.new_name("numpy.linalg") is None
