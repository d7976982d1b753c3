/* ebpf_magic: the installed <bpf/bpf_tracing.h>, then what newer libbpf releases define
 * and an older installed one may lack. Every addition is guarded, so a newer libbpf's own
 * definition is kept. */
#include_next <bpf/bpf_tracing.h>

#ifndef __EBPF_MAGIC_BPF_TRACING_H
#define __EBPF_MAGIC_BPF_TRACING_H

/* A uprobe's handler reads its arguments from the registers as a kprobe's does: the same
 * calling convention applies to user-space functions. */
#ifndef BPF_UPROBE
#define BPF_UPROBE(name, args...) BPF_KPROBE(name, ##args)
#endif
#ifndef BPF_URETPROBE
#define BPF_URETPROBE(name, args...) BPF_KRETPROBE(name, ##args)
#endif

/* A sixth register argument for BPF_KPROBE/BPF_UPROBE where the architecture has one */
#if defined(__TARGET_ARCH_x86) && !defined(PT_REGS_PARM6)
#define PT_REGS_PARM6(x) (__PT_REGS_CAST(x)->r9)
#define PT_REGS_PARM6_CORE(x) BPF_CORE_READ(__PT_REGS_CAST(x), r9)
#endif
#if defined(PT_REGS_PARM6) && !defined(___bpf_kprobe_args6)
#define ___bpf_kprobe_args6(x, args...) ___bpf_kprobe_args5(args), (void *)PT_REGS_PARM6(ctx)
#endif

#endif /* __EBPF_MAGIC_BPF_TRACING_H */
