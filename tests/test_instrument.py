"""The source rewrite that counts ring-buffer losses and describes struct types."""

from __future__ import annotations

from ebpf_magic.backend.bcc.instrument import histogram_kinds, prepare
from ebpf_magic.internal.ctext import mask_code, matching_paren

SRC = """
struct ev { u64 ts; char comm[16]; };
BPF_RINGBUF_OUTPUT(events, 8);
BPF_PERF_OUTPUT(perf);
int f(void *ctx) {
    struct ev e = {};
    // events.ringbuf_output(&e, sizeof(e), 0);  a comment, not a call
    char *s = "events.ringbuf_output(";
    if (events.ringbuf_output(&e, sizeof(e), f2((1), 2)) < 0) return 1;
    struct ev *p = events.ringbuf_reserve(sizeof(struct ev));
    if (p) events.ringbuf_submit(p, 0);
    perf.perf_submit(ctx, &e, sizeof(e));
    return 0;
}
"""


def test_masking_blanks_comments_and_strings_keeping_positions():
    code = mask_code('a("x(y", /* ( */ b) // )\nc')
    assert len(code) == len('a("x(y", /* ( */ b) // )\nc')
    assert "(" not in code[2:] and code.endswith("\nc")
    assert matching_paren(code, 1) == code.index(")")


def test_ringbuf_calls_are_wrapped_with_balanced_arguments():
    p = prepare(SRC)
    assert p.lost_maps == {"events": "__ebpf_magic_lost_events"}
    assert "BPF_PERCPU_ARRAY(__ebpf_magic_lost_events, u64, 1);" in p.text
    # the whole original call, nested parentheses included, sits inside the wrapper
    assert ("({ int __em_r = events.ringbuf_output(&e, sizeof(e), f2((1), 2)); "
            "if (__em_r) {") in p.text
    assert "({ void *__em_p = events.ringbuf_reserve(sizeof(struct ev)); if (!__em_p)" in p.text
    # comments, strings, submit and perf calls are left alone
    assert "// events.ringbuf_output(&e, sizeof(e), 0);  a comment" in p.text
    assert '"events.ringbuf_output("' in p.text
    assert "if (p) events.ringbuf_submit(p, 0);" in p.text
    assert "perf.perf_submit(ctx, &e, sizeof(e));" in p.text
    assert p.text.count("__em_r = ") == 1 and p.text.count("__em_p = ") == 1
    assert p.reserved == {"events": "struct ev"}


def test_file_scope_structs_get_hidden_type_maps():
    src = """
struct a { int x; };
#ifdef NOPE
struct b { int y; };
#endif
struct outer { struct a in; int z; };
int f(void *ctx) { struct local { int q; } l = {}; return l.q; }
"""
    p = prepare(src)
    assert p.type_maps == {"struct a": "__ebpf_magic_type_a",
                           "struct outer": "__ebpf_magic_type_outer"}
    assert "BPF_ARRAY(__ebpf_magic_type_outer, struct outer, 1);" in p.text
    assert p.hidden == {"__ebpf_magic_type_a", "__ebpf_magic_type_outer"}


def test_file_scope_typedefs_of_structs_get_hidden_type_maps():
    src = """
typedef struct { u32 a; } anon_t;
typedef struct inner { u32 b; } inner_t;
typedef struct inner again_t;
typedef struct elsewhere opaque_t;
typedef union { u32 c; u64 d; } un_t;
typedef struct inner *ptr_t;
typedef u32 word_t;
struct ev { anon_t x; inner_t y; };
int f(void *ctx) { typedef struct { int q; } local_t; return 0; }
"""
    p = prepare(src)
    assert p.type_maps == {
        "struct inner": "__ebpf_magic_type_inner", "struct ev": "__ebpf_magic_type_ev",
        "anon_t": "__ebpf_magic_typedef_anon_t", "inner_t": "__ebpf_magic_typedef_inner_t",
        "again_t": "__ebpf_magic_typedef_again_t", "un_t": "__ebpf_magic_typedef_un_t"}
    assert "BPF_ARRAY(__ebpf_magic_typedef_anon_t, anon_t, 1);" in p.text


def test_source_without_buffers_or_structs_is_unchanged():
    src = "int f(void *ctx) { return 0; }\n"
    p = prepare(src)
    assert p.text == src and not p.hidden


def test_histogram_kinds_follow_their_increments():
    code = """
BPF_HISTOGRAM(direct);
BPF_HISTOGRAM(by_var);
BPF_HISTOGRAM(by_key, struct k);
BPF_HISTOGRAM(lin);
BPF_HISTOGRAM(lin_var);
BPF_HISTOGRAM(unused);
int f(void *ctx) {
    u64 d = 5, v = 0;
    direct.increment(bpf_log2l(d));
    u64 slot = bpf_log2(d);
    by_var.increment(slot);
    struct k key = {}; key.slot = bpf_log2l(d); by_key.atomic_increment(key);
    lin.increment(d / 100);
    v = d * 2;
    lin_var.increment(v, 3);
    return 0;
}
"""
    assert histogram_kinds(code) == {"direct": "log2", "by_var": "log2", "by_key": "log2",
                                     "lin": "linear", "lin_var": "linear", "unused": "log2"}


def test_perf_submissions_are_counted_only_when_asked():
    assert "perf" not in prepare(SRC).lost_maps
    p = prepare(SRC, count_perf=True)
    assert p.lost_maps == {"events": "__ebpf_magic_lost_events",
                           "perf": "__ebpf_magic_lost_perf"}
    assert "BPF_PERF_OUTPUT(perf); BPF_PERCPU_ARRAY(__ebpf_magic_lost_perf, u64, 1);" in p.text
    assert ("({ int __em_r = perf.perf_submit(ctx, &e, sizeof(e)); if (__em_r) { int __em_k "
            "= 0; u64 *__em_v = __ebpf_magic_lost_perf.lookup(&__em_k);") in p.text
    assert p.hidden >= {"__ebpf_magic_lost_perf", "__ebpf_magic_lost_events"}
