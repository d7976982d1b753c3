/* ebpf_magic: the installed <bpf/bpf_helpers.h>, then what newer libbpf releases define
 * and an older installed one may lack. Every addition is guarded, so a newer libbpf's own
 * definition is kept. */
#include_next <bpf/bpf_helpers.h>

#ifndef __EBPF_MAGIC_BPF_HELPERS_H
#define __EBPF_MAGIC_BPF_HELPERS_H

/* Whether weak kernel symbol `sym` (a __ksym __weak kfunc or variable) was found when the
 * program loaded; a symbol that is not weak would fail the load instead of reading 0. */
#ifndef bpf_ksym_exists
#define bpf_ksym_exists(sym) ({                                                       \
	_Static_assert(!__builtin_constant_p(!!(sym)),                                     \
		       "bpf_ksym_exists(" #sym "): declare " #sym " __weak");              \
	!!(sym);                                                                           \
})
#endif

/* BTF tags the verifier reads on map values, struct members and arguments */
#ifndef __kptr_untrusted
#define __kptr_untrusted __attribute__((btf_type_tag("kptr_untrusted")))
#endif
#ifndef __percpu_kptr
#define __percpu_kptr __attribute__((btf_type_tag("percpu_kptr")))
#endif
#ifndef __uptr
#define __uptr __attribute__((btf_type_tag("uptr")))
#endif
#ifndef __contains
#define __contains(name, node) __attribute__((btf_decl_tag("contains:" #name ":" #node)))
#endif
#ifndef __arg_ctx
#define __arg_ctx __attribute__((btf_decl_tag("arg:ctx")))
#endif
#ifndef __arg_nonnull
#define __arg_nonnull __attribute__((btf_decl_tag("arg:nonnull")))
#endif
#ifndef __arg_nullable
#define __arg_nullable __attribute__((btf_decl_tag("arg:nullable")))
#endif
#ifndef __arg_trusted
#define __arg_trusted __attribute__((btf_decl_tag("arg:trusted")))
#endif
#ifndef __arg_arena
#define __arg_arena __attribute__((btf_decl_tag("arg:arena")))
#endif

#ifndef likely
#define likely(x) __builtin_expect(!!(x), 1)
#endif
#ifndef unlikely
#define unlikely(x) __builtin_expect(!!(x), 0)
#endif

/* A 64-bit map attribute (map_extra), as __uint is for 32-bit ones */
#ifndef __ulong
#define __ebpf_magic_cat2(a, b) a##b
#define __ebpf_magic_cat(a, b) __ebpf_magic_cat2(a, b)
#define __ulong(name, val) enum { __ebpf_magic_cat(__ebpf_magic_ulong_, __COUNTER__) = (val) } name
#endif

/* Open-coded iterators over the kernel's bpf_iter_<type>_{new,next,destroy} kfuncs (declared
 * in the generated vmlinux.h): the iterator lives in the for statement and is destroyed on
 * every way out of the loop. */
#ifndef bpf_for_each
#define bpf_for_each(type, cur, args...)                                                   \
	for (struct bpf_iter_##type __em_it                                                \
		     __attribute__((aligned(8), cleanup(bpf_iter_##type##_destroy))),      \
	     *__em_once __attribute__((unused)) =                                          \
		     (bpf_iter_##type##_new(&__em_it, ##args),                             \
		      (void)bpf_iter_##type##_destroy, (void *)0);                         \
	     ((cur) = bpf_iter_##type##_next(&__em_it));)
#endif
#ifndef bpf_for
#define bpf_for(i, start, end)                                                             \
	for (struct bpf_iter_num __em_it                                                   \
		     __attribute__((aligned(8), cleanup(bpf_iter_num_destroy))),           \
	     *__em_once __attribute__((unused)) =                                          \
		     (bpf_iter_num_new(&__em_it, (start), (end)),                          \
		      (void)bpf_iter_num_destroy, (void *)0);                              \
	     ({                                                                            \
		     int *__em_n = bpf_iter_num_next(&__em_it);                            \
		     /* bounds the verifier can see: start <= i < end */                   \
		     (__em_n && ((i) = *__em_n, (i) >= (start) && (i) < (end)));           \
	     });)
#endif
#ifndef bpf_repeat
#define bpf_repeat(n)                                                                      \
	for (struct bpf_iter_num __em_it                                                   \
		     __attribute__((aligned(8), cleanup(bpf_iter_num_destroy))),           \
	     *__em_once __attribute__((unused)) =                                          \
		     (bpf_iter_num_new(&__em_it, 0, (n)),                                  \
		      (void)bpf_iter_num_destroy, (void *)0);                              \
	     bpf_iter_num_next(&__em_it);)
#endif

#endif /* __EBPF_MAGIC_BPF_HELPERS_H */
