#!/usr/bin/env bash
# Set up a Debian/Ubuntu machine to run ebpf_magic, from nothing: system packages
# (BCC, bpftool, compilers, kernel headers), tracefs, a virtualenv in .venv with the
# package installed, and the unprivileged account a root-started eBPF kernel runs as
# (see docs/privileges.md). Idempotent: a second run only checks.
#
#   scripts/setup.sh [EXTRAS]    EXTRAS: pip extras to install, default "test"
#
# Run as root (BPF needs it, and so does apt).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-test}
# The distribution's interpreter (BCC's own Python): one the kernel's account can reach
# without any opening of a home directory, as a pyenv or uv Python under /root would need.
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ ! -x /usr/bin/python3 ] || PYTHON=/usr/bin/python3
fi
ACCOUNT=ebpf-kernel          # ebpf_magic.setup.launcher.ACCOUNT
ACCOUNT_HOME=/var/lib/$ACCOUNT
ENGINE=ebpf-engine           # ebpf_magic.setup.engine_launcher.ACCOUNT
ENGINE_HOME=/var/lib/$ENGINE

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/setup.sh: run as root (sudo): installing packages and loading BPF need it" >&2
    exit 1
fi

# --- system packages -----------------------------------------------------------------
arch=$(dpkg --print-architecture)
packages=(python3-bpfcc bpfcc-tools bpftool python3-venv python3-dev gcc make
          systemtap-sdt-dev iproute2 iputils-ping util-linux libcap2-bin binutils acl
          clang libbpf-dev bpftrace)
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

# --- the eBPF kernel's account ---------------------------------------------------------
# A kernel started by a root Jupyter server runs as this user with only the BPF
# capabilities. Its group may read tracefs and define uprobes (and kprobes) there:
# nothing else that tracefs offers is writable by it (docs/privileges.md).
if ! getent group "$ACCOUNT" >/dev/null; then
    say "creating group $ACCOUNT"
    groupadd --system "$ACCOUNT"
fi
if ! getent passwd "$ACCOUNT" >/dev/null; then
    say "creating user $ACCOUNT (no login shell, home $ACCOUNT_HOME)"
    useradd --system --gid "$ACCOUNT" --home-dir "$ACCOUNT_HOME" --no-create-home \
        --shell /usr/sbin/nologin --comment "ebpf_magic Jupyter kernel" "$ACCOUNT"
fi
install -d -o "$ACCOUNT" -g "$ACCOUNT" -m 0700 "$ACCOUNT_HOME"
as_kernel() { setpriv --reuid="$ACCOUNT" --regid="$ACCOUNT" --init-groups "$@"; }

# --- the cluster engines' account --------------------------------------------------------
# A root-started ipyparallel engine holds the cluster's key: it runs as its own user, so
# that no notebook kernel may read its environment, trace or signal it. It joins group
# $ACCOUNT for tracefs and the checkout, and keeps its own primary group and home.
if ! getent group "$ENGINE" >/dev/null; then
    say "creating group $ENGINE"
    groupadd --system "$ENGINE"
fi
if ! getent passwd "$ENGINE" >/dev/null; then
    say "creating user $ENGINE (no login shell, home $ENGINE_HOME, also in group $ACCOUNT)"
    useradd --system --gid "$ENGINE" --groups "$ACCOUNT" --home-dir "$ENGINE_HOME" \
        --no-create-home --shell /usr/sbin/nologin --comment "ebpf_magic cluster engine" \
        "$ENGINE"
fi
if ! id -nG "$ENGINE" | tr ' ' '\n' | grep -qx "$ACCOUNT"; then
    say "adding user $ENGINE to group $ACCOUNT"
    usermod -aG "$ACCOUNT" "$ENGINE"
fi
install -d -o "$ENGINE" -g "$ENGINE" -m 0700 "$ENGINE_HOME"

tracing=/sys/kernel/tracing
[ -d "$tracing/events" ] || tracing=/sys/kernel/debug/tracing
if [ "$(stat -c '%G %a' "$tracing")" != "$ACCOUNT 750" ]; then
    say "letting group $ACCOUNT read tracefs ($tracing)"
    mount -o "remount,gid=$ACCOUNT,mode=0750" "$tracing"
fi
for f in uprobe_events kprobe_events; do
    [ ! -e "$tracing/$f" ] || chmod g+w "$tracing/$f"
done
# Files tracefs makes group-writable itself (trace_marker, trace_marker_raw: 0220, also in
# instances) would let the group write into the trace buffers root reads: not those.
find "$tracing" -xdev -perm -g+w ! -name uprobe_events ! -name kprobe_events \
    -exec chmod g-w {} + 2>/dev/null || true

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

# --- Jupyter: only the eBPF kernel, and no kernel that imports from where it starts -------
# Replaces the stock "python3" kernelspec with an isolated one and has this environment's
# Jupyter server offer python3-ebpf alone and no terminals (ebpf_magic.setup.lab). Every
# run: reinstalling ipykernel puts its stock kernelspec back.
.venv/bin/python -I -m ebpf_magic install-lab >/dev/null

# --- what the kernel's user must read, and may not write -------------------------------
# It runs this checkout's interpreter and package: directories it cannot pass through
# (a checkout under /root, say) get a search-only ACL entry for its group (which users
# running the kernel as themselves join, see docs/privileges.md), nothing more. A home
# directory opened that way lets the group open files there whose names it knows: said
# below, so that a checkout outside home directories can be chosen instead.
base=$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')
for path in "$(readlink -f .venv/bin/python)" "$base/lib" "$PWD/ebpf_magic" "$PWD/notebooks"; do
    dir=
    IFS=/ read -ra parts <<<"${path#/}"
    for part in "${parts[@]}"; do        # from / down: a parent must be passable first
        dir="$dir/$part"
        [ -d "$dir" ] || break
        if ! as_kernel test -x "$dir"; then
            say "letting group $ACCOUNT pass through $dir (ACL g:$ACCOUNT:x)"
            case "$dir" in
                /root|/home/*) echo "scripts/setup.sh: warning: $dir is a home directory;" \
                    "group $ACCOUNT can now open files in it whose names it knows." \
                    "A checkout outside home directories (e.g. /srv, /opt) needs no such" \
                    "opening." >&2 ;;
            esac
            setfacl -m "g:$ACCOUNT:x" "$dir"
        fi
    done
done
for who in "$ACCOUNT" "$ENGINE"; do
    as_who() { setpriv --reuid="$who" --regid="$who" --init-groups "$@"; }
    if ! as_who .venv/bin/python -I -c 'import ebpf_magic, ipykernel' 2>/dev/null; then
        echo "scripts/setup.sh: user $who cannot run .venv/bin/python with its packages;" \
             "make the checkout and the Python it uses readable by it" >&2
        exit 1
    fi
    unsafe=$(as_who .venv/bin/python -I -c \
        'from ebpf_magic.setup import launcher; print(*launcher.writable_code_paths())')
    if [ -n "$unsafe" ]; then
        echo "scripts/setup.sh: user $who may write to $unsafe, which holds code the" \
             "launchers run as root; make it root's and not writable by others" >&2
        exit 1
    fi
done
# Root works in the checkout (git, the tests, notebooks/refresh_recordings.py writing
# notebooks/recordings): nothing in it may be the accounts' to change, or a link planted
# there could make root write elsewhere. The eBPF kernel saves recordings where it may
# write, its home (README, Notebooks).
if [ "$(stat -c %G notebooks/recordings)" = "$ACCOUNT" ]; then
    say "notebooks/recordings is root's again (the eBPF kernel saves under $ACCOUNT_HOME)"
    chgrp "$(id -gn)" notebooks/recordings
    chmod g-w notebooks/recordings
fi
for who in "$ACCOUNT" "$ENGINE"; do
    theirs=$(setpriv --reuid="$who" --regid="$who" --init-groups \
        find "$PWD" -xdev \( -writable -o -user "$who" \) -print -quit 2>/dev/null || true)
    if [ -n "$theirs" ]; then
        echo "scripts/setup.sh: user $who may change $theirs, in the checkout root works in;" \
             "make the checkout root's and not writable by others" >&2
        exit 1
    fi
done

# --- kernel headers as BCC will see them -------------------------------------------------
# Root builds them under /var/cache/ebpf_magic, where the kernel's user reads them too.
.venv/bin/python -I - <<'PY'
from ebpf_magic.backend.bcc import headers
h = headers.ensure()
if h.path is None:
    raise SystemExit("no kernel headers found: " + headers.install_hint())
print(f"kernel headers: {h.path} ({h.source})")
if h.warning:
    print("warning: " + h.warning)
from ebpf_magic.bpftrace import shim  # bpftrace's uid check, answered for the kernel's user
print(f"bpftrace uid shim: {shim.install()}")
PY
