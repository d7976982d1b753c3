#!/usr/bin/env bash
# Start JupyterLab on 127.0.0.1 with a working copy of notebooks/ and the "Python 3 (eBPF)" kernel.
# Assumes .venv exists with ebpf_magic[lab] installed (scripts/setup.sh lab does that).
# Extra arguments go to `jupyter lab` (e.g. --port=8899).
#
# `install-lab` puts the kernelspec in the virtualenv, so it is visible to this JupyterLab
# only, and root's when this runs as root; started by a root server, its launcher runs the
# kernel as the user ebpf-kernel (scripts/setup.sh creates it) with only CAP_BPF,
# CAP_PERFMON, CAP_NET_ADMIN, CAP_SYSLOG (and CAP_IPC_LOCK where locked memory stays
# limited). It also makes that the only kernel the server lists or starts, with no
# terminals: nothing the lab starts runs as root (ebpf_magic.setup.lab,
# docs/privileges.md). The token is generated and printed, never put on a command line
# (/proc/PID/cmdline is readable by every user).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/jupyter ]; then
    echo "scripts/lab.sh: .venv has no JupyterLab; run scripts/setup.sh lab first" >&2
    exit 1
fi
.venv/bin/python -I -m ebpf_magic install-lab

args=(--ip=127.0.0.1 --no-browser)
# Jupyter refuses to start as root unless told; the kernel still runs as ebpf-kernel.
if [ "$(id -u)" -eq 0 ]; then
    args+=(--allow-root)
    if ! getent passwd ebpf-kernel >/dev/null; then
        echo "scripts/lab.sh: no user ebpf-kernel for the eBPF kernel; run scripts/setup.sh lab" >&2
        exit 1
    fi
fi
# The lab serves a working copy of the notebooks, never the checkout: root runs the
# checkout's notebooks (./run test, refresh_recordings.py), and whoever uses the lab
# writes where it serves (ebpf_magic.setup.workspace).
workspace=$(.venv/bin/python -I -m ebpf_magic lab-workspace notebooks)
echo "scripts/lab.sh: serving $workspace (a working copy of notebooks/)"
exec .venv/bin/jupyter lab "${args[@]}" "$@" "$workspace"
