#!/usr/bin/env bash
# Set up a Debian/Ubuntu machine to run ebpf_magic, from nothing: system packages
# (BCC, bpftool, compilers, kernel headers), tracefs, and a virtualenv in .venv
# with the package installed. Idempotent: a second run only checks.
#
#   scripts/setup.sh [EXTRAS]    EXTRAS: pip extras to install, default "test"
#
# Run as root (BPF needs it, and so does apt).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-test}
PYTHON=${PYTHON:-python3}

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/setup.sh: run as root (sudo): installing packages and loading BPF need it" >&2
    exit 1
fi

# --- system packages -----------------------------------------------------------------
arch=$(dpkg --print-architecture)
packages=(python3-bpfcc bpfcc-tools bpftool python3-venv python3-dev gcc make
          systemtap-sdt-dev iproute2 iputils-ping util-linux libcap2-bin binutils)
case " $EXTRAS " in *test*|*browser*) packages+=(chromium) ;; esac
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Kernel headers: the running kernel's when the distribution has them, else the
# distribution's current ones (ebpf_magic then merges them for BCC and warns).
release=$(uname -r)
if [ ! -d "/lib/modules/$release/build/include" ] && ! ls -d /usr/src/linux-headers-* >/dev/null 2>&1; then
    missing+=("HEADERS")
fi
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    real=()
    for p in "${missing[@]}"; do [ "$p" = HEADERS ] || real+=("$p"); done
    [ ${#real[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${real[@]}"
    if [[ " ${missing[*]} " == *" HEADERS "* ]]; then
        if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
            apt-get install -y -qq "linux-headers-$release"
        else
            say "no headers packaged for kernel $release; installing linux-headers-$arch"
            apt-get install -y -qq "linux-headers-$arch"
        fi
    fi
fi

# --- tracefs (BCC attaches tracepoints and uprobes through it) -------------------------
if [ ! -d /sys/kernel/tracing/events ] && [ ! -d /sys/kernel/debug/tracing/events ]; then
    say "mounting tracefs at /sys/kernel/tracing"
    mount -t tracefs tracefs /sys/kernel/tracing
fi

# --- virtualenv ----------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
    say "creating virtualenv .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.ebpf_magic-$(sha1sum pyproject.toml | cut -c1-12)-${EXTRAS//,/_}"
if [ ! -e "$stamp" ]; then
    say "installing ebpf_magic[$EXTRAS] into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
    touch "$stamp"
fi

# --- kernel headers as BCC will see them -------------------------------------------------
.venv/bin/python - <<'PY'
from ebpf_magic import headers
h = headers.ensure()
if h.path is None:
    raise SystemExit("no kernel headers found: " + headers.install_hint())
print(f"kernel headers: {h.path} ({h.source})")
if h.warning:
    print("warning: " + h.warning)
PY
