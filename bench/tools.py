"""The ready-made tools: how long each takes to start, and what it costs a busy workload.

For every tool of ``ebpf_magic.tools``: its start time (the call to attached: compile,
load, attach; cold, the first in a process, and warm) and the throughput of a workload
that hits its probes as fast as one CPU can (a C loop: system calls, forks and execs, pipe
round trips between two processes, loopback TCP connections, O_DIRECT writes to a loop
device...), without the tool and with it. Where BCC's own tool runs on this kernel
(kernel-notes: syscount, exitsnoop, runqlat, runqlen, profile, wakeuptime, bitesize,
tcplife, tcpstates, tcpretrans, hardirqs, softirqs), the same for it in the same run, and
the ratios. Throughput is counted per second of CPU time the workload used (its children
included), since a probe's cost lands there and the other tenants of a shared machine
change it little; each condition's is the best of ``REPEATS`` runs of ``SECONDS`` each, the
baseline the mean of the runs just before and just after.

Run as root: ``.venv/bin/python bench/tools.py [TOOL ...]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ebpf_magic import tools

SECONDS = 1.0
REPEATS = 3
LOAD_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    const char *mode = argv[1];
    double seconds = atof(argv[2]), end = now() + seconds;
    long n = 0;
    if (!strcmp(mode, "pingpong")) {          /* two processes, one byte back and forth */
        int a[2], b[2];
        if (pipe(a) || pipe(b)) return 1;
        if (fork() == 0) {
            char c;
            while (read(a[0], &c, 1) == 1 && c) write(b[1], &c, 1);
            _exit(0);
        }
        char c = 1;
        while (now() < end)
            for (int i = 0; i < 100; i++, n++) { write(a[1], &c, 1); read(b[0], &c, 1); }
        c = 0;
        write(a[1], &c, 1);
        wait(NULL);
    } else if (!strcmp(mode, "tcp")) {       /* loopback connections, made and closed */
        int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
        socklen_t len = sizeof(sa);
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(l, (void *)&sa, sizeof(sa)) || listen(l, 128)) return 1;
        getsockname(l, (void *)&sa, &len);
        while (now() < end)
            for (int i = 0; i < 20; i++, n++) {
                int c = socket(AF_INET, SOCK_STREAM, 0);
                struct linger lg = {1, 0};   /* reset on close: no TIME_WAIT pile-up */
                setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
                if (connect(c, (void *)&sa, sizeof(sa))) return 1;
                int s = accept(l, NULL, NULL);
                close(c);
                close(s);
            }
    } else if (!strcmp(mode, "exec")) {       /* fork, exec /bin/true, wait */
        while (now() < end) {
            pid_t p = fork();
            if (p == 0) { execl("/bin/true", "true", "an-argument", NULL); _exit(127); }
            waitpid(p, NULL, 0);
            n++;
        }
    } else if (!strcmp(mode, "dio")) {        /* 4 KiB O_DIRECT writes to argv[3] */
        int fd = open(argv[3], O_WRONLY | O_DIRECT);
        void *buf;
        if (fd < 0 || posix_memalign(&buf, 4096, 4096)) return 1;
        memset(buf, 7, 4096);
        while (now() < end)
            for (int i = 0; i < 10; i++, n++)
                if (pwrite(fd, buf, 4096, (n % 4096) * 4096) != 4096) return 1;
    } else {                                   /* one system call, in a tight loop */
        struct stat st;
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
        while (now() < end)
            for (int i = 0; i < 1000; i++, n++) {
                if (!strcmp(mode, "getppid")) syscall(SYS_getppid);
                else if (!strcmp(mode, "open")) close(open("/etc/hostname", O_RDONLY));
                else if (!strcmp(mode, "stat")) stat("/etc/hostname", &st);
                else if (!strcmp(mode, "kill")) kill(getpid(), 0);
                else if (!strcmp(mode, "umount")) umount2("/nonexistent-mount-point", 0);
                else if (!strcmp(mode, "bind")) {
                    int s = socket(AF_INET, SOCK_DGRAM, 0);
                    bind(s, (void *)&sa, sizeof(sa));
                    close(s);
                }
            }
    }
    /* operations per second of CPU time this process and its children used: what a probe
       costs lands there, and other tenants of a shared machine change it little */
    struct rusage self, kids;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &kids);
    double cpu = self.ru_utime.tv_sec + self.ru_utime.tv_usec / 1e6 + self.ru_stime.tv_sec +
                 self.ru_stime.tv_usec / 1e6 + kids.ru_utime.tv_sec + kids.ru_utime.tv_usec / 1e6 +
                 kids.ru_stime.tv_sec + kids.ru_stime.tv_usec / 1e6;
    printf("%.1f\n", n / cpu);
    return 0;
}
"""

# tool -> (workload, BCC's command or None)
PLAN = {
    "execsnoop": ("exec", None), "exitsnoop": ("exec", ["exitsnoop"]),
    "opensnoop": ("open", None), "statsnoop": ("stat", None),
    "syscount": ("getppid", ["syscount", "-L"]), "killsnoop": ("kill", None),
    "runqlat": ("pingpong", ["runqlat"]), "runqlen": ("pingpong", ["runqlen"]),
    "cpudist": ("pingpong", None), "offcputime": ("pingpong", None),
    "profile": ("getppid", ["profile", "-F", "49"]),
    "wakeuptime": ("pingpong", ["wakeuptime"]),
    "biolatency": ("dio", None), "biosnoop": ("dio", None), "bitesize": ("dio", ["bitesize"]),
    "tcplife": ("tcp", ["tcplife"]), "tcpconnect": ("tcp", None), "tcpaccept": ("tcp", None),
    "tcpstates": ("tcp", ["tcpstates"]), "tcpretrans": ("tcp", ["tcpretrans"]),
    "oomkill": ("getppid", None), "hardirqs": ("dio", ["hardirqs"]),
    "softirqs": ("tcp", ["softirqs"]), "mountsnoop": ("umount", None),
    "bindsnoop": ("bind", None),
}


def build() -> str:
    tmp = tempfile.mkdtemp(prefix="ebpf_magic_bench")
    src, out = Path(tmp, "load.c"), str(Path(tmp, "load"))
    src.write_text(LOAD_C)
    subprocess.run(["gcc", "-O2", "-o", out, str(src)], check=True)
    return out


def rate(load: str, mode: str, disk: str) -> float:
    """The workload's operations per CPU second, best of REPEATS."""
    best = 0.0
    for _ in range(REPEATS):
        out = subprocess.run([load, mode, str(SECONDS), f"/dev/{disk}"], capture_output=True,
                             text=True, check=True).stdout
        best = max(best, float(out))
    return best


def bcc_env() -> dict[str, str]:
    from ebpf_magic.backend.bcc import headers

    tree = headers.find().path
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if tree:
        env["BCC_KERNEL_SOURCE"] = str(tree)
    return env


def start_bcc(cmd: list[str], log: Path) -> tuple[subprocess.Popen, float]:
    """BCC's tool, started, printing to ``log``; the seconds until it said it traces (its
    first line)."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([f"/usr/sbin/{cmd[0]}-bpfcc", *cmd[1:]], stdout=out,
                                stderr=subprocess.DEVNULL, env=bcc_env())
    while not log.read_text().strip():
        if proc.poll() is not None or time.perf_counter() - t0 > 120:
            raise RuntimeError(f"BCC's {cmd[0]} did not start")
        time.sleep(0.01)
    return proc, time.perf_counter() - t0


def stop_bcc(proc: subprocess.Popen) -> None:
    proc.send_signal(2)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def loop_disk() -> tuple[str, str]:
    tmp = tempfile.mkdtemp(prefix="ebpf_magic_bench_disk")
    image = Path(tmp, "disk.img")
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    dev = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                         text=True, check=True).stdout.strip()
    return os.path.basename(dev), tmp


def main(names: list[str]) -> None:
    load = build()
    disk, tmp = loop_disk()
    try:
        for name in names or list(PLAN):
            mode, bcc_cmd = PLAN[name]
            tool = tools.get(name)
            opts = {"disk": disk} if name in ("biolatency", "biosnoop", "bitesize") else {}
            t0 = time.perf_counter()
            tool.start(**opts).stop()  # the first start in a process learns the event layouts
            cold = time.perf_counter() - t0
            base = rate(load, mode, disk)
            t0 = time.perf_counter()
            run = tool.start(**opts)
            warm = time.perf_counter() - t0
            try:
                ours = rate(load, mode, disk)
            finally:
                run.stop()
            after = rate(load, mode, disk)
            row = {"tool": name, "workload": mode, "cold_s": cold, "warm_s": warm,
                   "base": (base + after) / 2, "ours": ours}
            if bcc_cmd:
                proc, bcc_started = start_bcc(bcc_cmd, Path(tmp, "bcc.log"))
                try:
                    theirs = rate(load, mode, disk)
                finally:
                    stop_bcc(proc)
                bcc_after = rate(load, mode, disk)
                row.update(bcc_start_s=bcc_started, bcc_base=(after + bcc_after) / 2,
                           bcc=theirs)
            print(line(row), flush=True)
    finally:
        subprocess.run(["losetup", "-d", f"/dev/{disk}"], check=False)
        subprocess.run(["rm", "-rf", tmp, os.path.dirname(load)], check=False)


def line(row: dict) -> str:
    kept = row["ours"] / row["base"]
    text = (f"{row['tool']:<11} {row['workload']:<8} start {row['cold_s']:5.2f} s cold, "
            f"{row['warm_s']:5.2f} s warm; {row['base']:>9,.0f} ops/CPU-s alone, {kept:6.1%} "
            f"with ours")
    if "bcc" in row:
        bcc_kept = row["bcc"] / row["bcc_base"]
        slower = row["bcc_start_s"] / row["warm_s"]
        text += (f"; BCC: start {row['bcc_start_s']:5.2f} s ({slower:4.1f}x ours warm), "
                 f"{bcc_kept:6.1%} with BCC's; kept ours/BCC {kept / bcc_kept:4.2f}x")
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
