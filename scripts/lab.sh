#!/usr/bin/env bash
# Start JupyterLab on 127.0.0.1 with notebooks/ and the "Python 3 (eBPF)" kernel.
# Assumes .venv exists with ebpf_magic[lab] installed (scripts/setup.sh lab does that).
# Extra arguments go to `jupyter lab` (e.g. --port=8899).
#
# The kernelspec goes into the virtualenv (--sys-prefix), so it is visible to this
# JupyterLab only. Its launcher keeps the kernel process to CAP_BPF, CAP_PERFMON,
# CAP_NET_ADMIN and CAP_SYSLOG; see docs/privileges.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/jupyter ]; then
    echo "scripts/lab.sh: .venv has no JupyterLab; run scripts/setup.sh lab first" >&2
    exit 1
fi
.venv/bin/python -m ebpf_magic install-kernel --sys-prefix

args=(--ip=127.0.0.1 --no-browser
      --MappingKernelManager.default_kernel_name=python3-ebpf)
# Jupyter refuses to start as root unless told; the kernel still gives up root's
# other capabilities.
[ "$(id -u)" -ne 0 ] || args+=(--allow-root)
exec .venv/bin/jupyter lab "${args[@]}" "$@" notebooks/
