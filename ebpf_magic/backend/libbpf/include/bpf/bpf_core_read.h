/* ebpf_magic: the installed <bpf/bpf_core_read.h>, then what newer libbpf releases define
 * and an older installed one may lack. Every addition is guarded, so a newer libbpf's own
 * definition is kept. */
#include_next <bpf/bpf_core_read.h>

#ifndef __EBPF_MAGIC_BPF_CORE_READ_H
#define __EBPF_MAGIC_BPF_CORE_READ_H

/* `ptr` seen as a pointer to kernel type `type` for direct (read-only, fault-safe) loads,
 * through the kernel's bpf_rdonly_cast kfunc (declared in the generated vmlinux.h) */
#ifndef bpf_core_cast
#define bpf_core_cast(ptr, type)                                                           \
	((typeof(type) *)bpf_rdonly_cast((ptr), bpf_core_type_id_kernel(type)))
#endif

#endif /* __EBPF_MAGIC_BPF_CORE_READ_H */
