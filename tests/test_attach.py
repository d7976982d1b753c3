"""Each attach kind that works here, with exact counts from workloads the test controls."""

import ctypes
import mmap
import os
import shutil
import subprocess
import time
import uuid

import pytest

from ebpf_magic import Program

from conftest import loaded_prog_ids

pytestmark = pytest.mark.kernel

libc = ctypes.CDLL("libc.so.6", use_errno=True)


def test_uprobe_on_libc_counts_calls(no_leaks):
    src = """
    BPF_ARRAY(calls, u64, 1);
    int on_getpid(struct pt_regs *ctx) {
        if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
        int zero = 0;
        calls.increment(zero);
        return 0;
    }"""
    with Program(src, attach=["uprobe:c:getpid"], defines={"PID": os.getpid()}) as prog:
        for _ in range(250):
            libc.getpid()
        assert prog.maps["calls"][0] == 250


def test_uretprobe_and_pid_filter(no_leaks):
    src = """
    #include <uapi/linux/ptrace.h>
    BPF_HASH(rets, u32, u64);
    int on_ret(struct pt_regs *ctx) { u32 k = PT_REGS_RC(ctx) == PID; rets.increment(k); return 0; }
    """
    with Program(src, attach=["uretprobe:c:getpid"], pid=os.getpid(),
                 defines={"PID": os.getpid()}) as prog:
        for _ in range(40):
            libc.getpid()
        assert dict(prog.maps["rets"].items()) == {1: 40}


USDT_C = r"""
#include <sys/sdt.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    for (int i = 0; i < n; i++) DTRACE_PROBE1(demo, tick, i);
    return 0;
}
"""


@pytest.fixture(scope="module")
def usdt_binary(tmp_path_factory):
    if not shutil.which("gcc") or not os.path.exists("/usr/include/x86_64-linux-gnu/sys/sdt.h") \
            and not os.path.exists("/usr/include/sys/sdt.h"):
        pytest.fail("gcc and <sys/sdt.h> (systemtap-sdt-dev) are needed; scripts/setup.sh "
                    "installs them")
    d = tmp_path_factory.mktemp("usdt")
    (d / "demo.c").write_text(USDT_C)
    subprocess.run(["gcc", "-O1", "-o", str(d / "demo"), str(d / "demo.c")], check=True)
    return d / "demo"


def test_usdt_probe_counts_exactly(usdt_binary, no_leaks):
    # the process must exist when attaching by pid: start it stopped on a pipe read
    proc = subprocess.Popen(["sh", "-c", f"read x; exec {usdt_binary} 321"],
                            stdin=subprocess.PIPE)
    try:
        time.sleep(0.2)
        src = """
        BPF_ARRAY(ticks, u64, 1);
        BPF_ARRAY(sum, u64, 1);
        int on_tick(struct pt_regs *ctx) {
            int i = 0; int zero = 0;
            bpf_usdt_readarg(1, ctx, &i);
            ticks.increment(zero);
            sum.increment(zero, i);
            return 0;
        }"""
        with Program(src, attach=[f"usdt:{usdt_binary}:demo:tick"]) as prog:
            proc.communicate(b"go\n", timeout=30)
            assert prog.maps["ticks"][0] == 321
            assert prog.maps["sum"][0] == sum(range(321))
    finally:
        proc.kill()
        proc.wait()


def test_perf_sampling_collects_user_stacks(no_leaks):
    src = """
    #include <uapi/linux/bpf_perf_event.h>
    BPF_HASH(samples, u32, u64);
    BPF_STACK_TRACE(stacks, 1024);
    BPF_HASH(stack_ids, int, u64);
    int on_sample(struct bpf_perf_event_data *ctx) {
        u32 pid = bpf_get_current_pid_tgid() >> 32;
        if (pid != TARGET) return 0;
        samples.increment(pid);
        int id = stacks.get_stackid(&ctx->regs, BPF_F_USER_STACK);
        if (id >= 0) stack_ids.increment(id);
        return 0;
    }"""
    with Program(src, attach=["profile:hz:199"], defines={"TARGET": os.getpid()}) as prog:
        cpu0, start = time.thread_time(), time.monotonic()
        while time.monotonic() - start < 1.0:  # one busy thread for one second
            pass
        cpu = time.thread_time() - cpu0  # less than 1 s when the machine is busy
        samples = prog.maps["samples"].get(os.getpid(), 0)
        ids = list(prog.maps["stack_ids"].keys())
    # cpu-clock samples the CPU time this process used, at 199 Hz
    assert 0.6 * 199 * cpu <= samples <= 1.3 * 199 * cpu + 10, (samples, cpu)
    assert ids, "no user stacks were recorded"


def test_software_event_page_faults(no_leaks):
    src = """
    #include <uapi/linux/bpf_perf_event.h>
    BPF_ARRAY(n, u64, 1);
    int on_fault(struct bpf_perf_event_data *ctx) {
        if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
        int z = 0; n.increment(z); return 0;
    }"""
    with Program(src, attach=["software:page-faults:1"], defines={"PID": os.getpid()}) as prog:
        buf = mmap.mmap(-1, 64 * mmap.PAGESIZE)
        buf.madvise(mmap.MADV_NOHUGEPAGE)  # one fault per page, not one per huge page
        for i in range(0, len(buf), mmap.PAGESIZE):
            buf[i] = 1
        buf.close()
        assert prog.maps["n"][0] >= 64


def test_raw_tracepoint(no_leaks):
    src = """
    BPF_ARRAY(n, u64, 1);
    RAW_TRACEPOINT_PROBE(sys_enter) {
        if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
        if (ctx->args[1] != 110) return 0;  /* getppid on x86-64 */
        int z = 0; n.increment(z); return 0;
    }"""
    with Program(src, defines={"PID": os.getpid()}) as prog:
        for _ in range(33):
            os.getppid()
        assert prog.maps["n"][0] == 33


@pytest.fixture
def veth():
    """A veth pair, one end in a fresh network namespace, removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    ns, a, b = f"em{tag}", f"ema{tag}", f"emb{tag}"

    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True)

    ip("netns", "add", ns)
    try:
        ip("link", "add", a, "type", "veth", "peer", "name", b)
        ip("link", "set", b, "netns", ns)
        ip("addr", "add", "10.231.0.1/30", "dev", a)
        ip("link", "set", a, "up")
        ip("-n", ns, "addr", "add", "10.231.0.2/30", "dev", b)
        ip("-n", ns, "link", "set", b, "up")
        yield ns, a, b
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_xdp_counts_icmp_on_veth(veth, no_leaks):
    ns, a, b = veth
    src = """
    #include <uapi/linux/if_ether.h>
    #include <uapi/linux/ip.h>
    BPF_ARRAY(proto, u64, 256);
    int count(struct xdp_md *ctx) {
        void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
        struct ethhdr *eth = data;
        if ((void *)(eth + 1) > end) return XDP_PASS;
        if (eth->h_proto != htons(ETH_P_IP)) return XDP_PASS;
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end) return XDP_PASS;
        int p = ip->protocol;
        proto.increment(p);
        return XDP_PASS;
    }"""
    if not shutil.which("ping"):
        pytest.fail("ping (iputils-ping) is needed for the XDP test; scripts/setup.sh installs it")
    with Program(src, attach=[f"xdp:{a}"]) as prog:
        ids = set(prog.prog_ids())
        # echo requests sent from inside the namespace arrive at a
        subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "5", "-i", "0.05", "-W", "1",
                        "10.231.0.1"], capture_output=True, timeout=20)
        assert "xdp" in subprocess.run(["ip", "-d", "link", "show", a], capture_output=True,
                                       text=True).stdout
        assert prog.maps["proto"][1] == 5  # ICMP
    assert "xdp" not in subprocess.run(["ip", "-d", "link", "show", a], capture_output=True,
                                       text=True).stdout
    assert not ids & loaded_prog_ids()


def test_two_functions_on_one_tracepoint_both_count_and_both_detach(no_leaks):
    src = """
    BPF_ARRAY(n, u64, 2);
    int a(void *ctx) {
        if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
        int k = 0; n.increment(k); return 0;
    }
    int b(void *ctx) {
        if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
        int k = 1; n.increment(k); return 0;
    }"""
    tp = "tracepoint:syscalls:sys_enter_getppid"
    with Program(src, attach=[f"{tp}=a", f"{tp}=b"], defines={"PID": os.getpid()}) as prog:
        ids = set(prog.prog_ids())
        for _ in range(9):
            os.getppid()
        assert [prog.maps["n"][0], prog.maps["n"][1]] == [9, 9]
    assert not ids & loaded_prog_ids()
