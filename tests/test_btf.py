"""BTF and DWARF to numpy dtypes, checked against what clang itself computes.

Each test compiles C with ``clang -g -O2 -target bpf`` (and ``bpfeb`` for big endian). Layouts
are checked against ``offsetof``/``sizeof`` values compiled into a global array, and values
against initialized globals read back from the object's own sections.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebpf_magic.internal import dtypes
from ebpf_magic.kernel.btf import BTFError, Spec, c_decl, datasec, dtype, struct_fields, vmlinux
from ebpf_magic.kernel.btf.dwarf import dwarf_spec
from ebpf_magic.kernel.btf.elf import ELF

from conftest import IN_CI

CLANG = shutil.which("clang")
VMLINUX = Path("/sys/kernel/btf/vmlinux")
TARGETS = ["bpf", "bpfeb"]

TYPES = r"""
typedef unsigned long long u64;
typedef unsigned int u32;
typedef u32 pid32;
typedef const volatile pid32 cv_pid;
enum state { IDLE = 0, RUNNING = 1, DEAD = 7 };
struct inner { u32 a; char name[6]; };
struct bits { u32 lo:3; int neg:5; u32 :2; u64 big:40; char c; };
struct ebits { enum state st:4; u32 rest:28; };
union un { u32 ip4; unsigned char ip6[16]; };
struct rec {
    u64 ts; struct inner in; enum state st; struct bits b; union un u;
    cv_pid pid; u32 grid[2][3]; char comms[2][4]; _Bool ok; void *ptr; struct bits pairs[2];
    u32 flex[];
};
struct anon { int kind; union { u32 x; u64 y; }; struct { short p, q; }; };
union flags { u32 raw; struct { u32 a:4; u32 b:4; }; };
"""

SOURCE = TYPES + r"""
#define OFF(T, f) __builtin_offsetof(struct T, f)
unsigned long long layout[] = {
    sizeof(struct rec), OFF(rec, in), OFF(rec, in.name), OFF(rec, st), OFF(rec, b),
    OFF(rec, b.c), sizeof(struct bits), OFF(rec, u), sizeof(union un), OFF(rec, pid),
    OFF(rec, grid), OFF(rec, comms), OFF(rec, ok), OFF(rec, ptr), OFF(rec, flex),
    sizeof(struct anon), OFF(anon, x), OFF(anon, y), OFF(anon, q), OFF(rec, pairs[1]),
};
struct rec initialized = {
    .ts = 0x1122334455667788ULL, .in = {.a = 42, .name = "eth0"}, .st = RUNNING,
    .b = {.lo = 5, .neg = -3, .big = 0xABCDEF0123ULL, .c = 'x'}, .u = {.ip4 = 0x0A000001},
    .pid = 4321, .grid = {{1, 2, 3}, {4, 5, 6}}, .comms = {"ab", "cde"}, .ok = 1,
    .pairs = {{.lo = 1, .neg = -1}, {.big = 3, .c = 4}},
};
struct anon anon_value = {.kind = 2, .y = 0x100000005ULL, .q = -9};
const volatile int ro_int = -17;
const volatile char ro_name[8] = "ro";
u64 bss_a;
struct bits bss_b;
int data_int = 99;
struct ebits ebits_value = {.st = DEAD, .rest = 5};
union flags flags_value;

__attribute__((section("tp/syscalls/sys_enter_getppid"), used))
int prog(void *ctx) {
    return bss_a + data_int + ro_int + initialized.b.lo + anon_value.kind;
}
char _license[] __attribute__((section("license"), used)) = "GPL";
"""

EXPECTED = {
    "ts": 0x1122334455667788, "in": {"a": 42, "name": "eth0"}, "st": "RUNNING",
    "b": {"lo": 5, "neg": -3, "big": 0xABCDEF0123, "c": ord("x")},
    "u": {"ip4": 0x0A000001},  # ip6 is the same bytes: checked per byte order below
    "pid": 4321, "grid": [1, 2, 3, 4, 5, 6], "comms": ["ab", "cde"], "ok": True, "ptr": 0,
    "pairs": [{"lo": 1, "neg": -1, "big": 0, "c": 0}, {"lo": 0, "neg": 0, "big": 3, "c": 4}],
    "flex": [],
}


@pytest.fixture(scope="module")
def clang() -> str:
    if CLANG is None:
        if IN_CI:
            pytest.fail("clang is missing under CI=true; scripts/setup.sh installs it")
        pytest.skip("clang is not installed (apt-get install clang)")
    return CLANG


def compile_c(clang: str, tmp: Path, source: str, target: str = "bpf") -> bytes:
    src, obj = tmp / f"t_{target}.c", tmp / f"t_{target}.o"
    src.write_text(source)
    subprocess.run([clang, "-g", "-O2", "-target", target, "-c", str(src), "-o", str(obj)],
                   check=True, capture_output=True)
    return obj.read_bytes()


@pytest.fixture(scope="module", params=TARGETS)
def obj(request, clang, tmp_path_factory) -> tuple[str, bytes]:
    target = request.param
    return target, compile_c(clang, tmp_path_factory.mktemp(target), SOURCE, target)


def global_value(data: bytes, spec: Spec, section: str, name: str) -> tuple[np.dtype, bytes]:
    """A global's dtype and the bytes the compiler stored for it."""
    offset, dt = datasec(spec, section)[name]
    raw = ELF(data).section_data(section)
    return dt, raw[offset:offset + dt.itemsize]


def struct_id(spec: Spec, name: str) -> int:
    (t,) = [t for t in spec.find(name) if t.kind in ("struct", "union")]
    return t.id


def test_layout_matches_clang_offsetof(obj):
    target, data = obj
    spec = Spec.from_elf(data)
    layout_dt, raw = global_value(data, spec, ".data", "layout")
    assert layout_dt == np.dtype((spec.byteorder + "u8", (20,)))
    want = np.frombuffer(raw, spec.byteorder + "u8").tolist()
    rec = dtype(spec, struct_id(spec, "rec"))
    anon = dtype(spec, struct_id(spec, "anon"))
    fields = rec.fields
    got = [
        rec.itemsize, fields["in"][1], fields["in"][1] + rec["in"].fields["name"][1],
        fields["st"][1], fields["b"][1], fields["b"][1] + rec["b"].fields["c"][1],
        rec["b"].itemsize, fields["u"][1], rec["u"].itemsize, fields["pid"][1],
        fields["grid"][1], fields["comms"][1], fields["ok"][1], fields["ptr"][1],
        fields["flex"][1], anon.itemsize, anon.fields["x"][1], anon.fields["y"][1],
        anon.fields["q"][1], fields["pairs"][1] + rec["pairs"].itemsize // 2,
    ]
    assert got == want
    assert rec["in"]["name"] == np.dtype("S6")
    assert rec["comms"] == np.dtype(("S4", (2,)))
    assert rec["grid"].shape == (2, 3)
    assert rec["ok"] == np.dtype("?")
    assert rec["pid"] == np.dtype(spec.byteorder + "u4")  # through typedefs and qualifiers
    assert rec["b"]["c"] == np.dtype("i1") and rec["ptr"].itemsize == 8


def test_initialized_struct_decodes_and_round_trips(obj):
    target, data = obj
    spec = Spec.from_elf(data)
    dt, raw = global_value(data, spec, ".data", "initialized")
    assert dt == dtype(spec, struct_id(spec, "rec"))
    record = np.frombuffer(raw, dt)
    value = dtypes.to_python(record[0], dt)
    ip6 = value["u"].pop("ip6")
    assert value == EXPECTED
    ip4 = (0x0A000001).to_bytes(4, "big" if target == "bpfeb" else "little")
    assert bytes(ip6) == ip4 + bytes(12)
    # encoding what was decoded gives back the compiler's bytes, padding and unnamed bits too
    assert dtypes.encode(dtypes.to_python(record[0], dt), dt).tobytes() == raw
    assert dtypes.encode(dtypes.to_key(record[0], dt), dt).tobytes() == raw
    row = dtypes.frame(record).iloc[0]
    assert (row["st"], row["b.neg"], row["comms[1]"], row["grid[5]"]) == ("RUNNING", -3, "cde", 6)
    assert (row["pairs[0].neg"], row["pairs[1].big"], row["pairs[1].c"]) == (-1, 3, 4)


def test_bitfields_are_columns_and_encode_writes_only_their_bits(obj):
    target, data = obj
    spec = Spec.from_elf(data)
    dt = dtype(spec, struct_id(spec, "bits"))
    assert dtypes.fields(dt) == ["lo", "neg", "big", "c"]
    assert dtypes.describe(dt) == "struct {u32 lo:3, s32 neg:5, u64 big:40, s8 c}"
    rows = [{"lo": 7, "neg": -16, "big": (1 << 40) - 1, "c": 1},
            {"lo": 0, "neg": 15, "big": 0, "c": -1},
            {"lo": 1, "neg": -1, "big": 1 << 39, "c": 0}]
    records = np.concatenate([dtypes.encode(r, dt) for r in rows])
    frame = dtypes.frame(records)
    assert list(frame.columns) == ["lo", "neg", "big", "c"]
    assert frame.to_dict("records") == rows
    assert frame["neg"].dtype == np.int32 and frame["big"].dtype == np.uint64
    assert list(dtypes.frame(records[:0]).columns) == ["lo", "neg", "big", "c"]
    assert [dtypes.to_python(r, dt) for r in records] == rows
    # setting one bitfield leaves its neighbours alone
    one = dtypes.encode({"neg": -1}, dt)
    assert dtypes.to_python(one[0], dt) == {"lo": 0, "neg": -1, "big": 0, "c": 0}
    with pytest.raises(ValueError, match="3-bit field 'lo'"):
        dtypes.encode({"lo": 8}, dt)
    with pytest.raises(ValueError, match="5-bit field 'neg'"):
        dtypes.encode({"neg": -17}, dt)


def test_bss_offsets_are_the_symbol_values(obj):
    """clang leaves DATASEC offsets 0 in an object; they come from the symbol table."""
    from elftools.elf.elffile import ELFFile

    target, data = obj
    spec = Spec.from_elf(data)
    symtab = ELFFile(io.BytesIO(data)).get_section_by_name(".symtab")
    symbols = {s.name: s["st_value"] for s in symtab.iter_symbols()}
    bss = datasec(spec, ".bss")
    assert sorted(bss) == ["bss_a", "bss_b", "flags_value"]
    assert {name: off for name, (off, _) in bss.items()} == {name: symbols[name] for name in bss}
    assert len(set(symbols[name] for name in bss)) == 3
    assert spec.find(".bss", "datasec")[0].size == 20


def test_enum_columns_show_names(obj):
    target, data = obj
    spec = Spec.from_elf(data)
    dt = dtype(spec, spec.find("state", "enum")[0].id)
    assert dtypes.enum_names(dt) == {0: "IDLE", 1: "RUNNING", 7: "DEAD"}
    values = np.array([1, 7, 0, 3, 1], dt)
    column = dtypes.columns(values)["value"]
    assert isinstance(column, pd.Categorical)
    assert list(column) == ["RUNNING", "DEAD", "IDLE", "3", "RUNNING"]
    assert list(column.categories[:3]) == ["IDLE", "RUNNING", "DEAD"]
    assert dtypes.to_python(values[1], dt) == "DEAD" and dtypes.to_python(values[3], dt) == 3
    assert dtypes.encode("DEAD", dt)[0] == 7 and dtypes.encode(3, dt)[0] == 3
    with pytest.raises(ValueError, match="names are \\['IDLE', 'RUNNING', 'DEAD'\\]"):
        dtypes.encode("ZOMBIE", dt)
    # an enum bitfield shows its name too, and takes one
    ebits, raw = global_value(data, spec, ".data", "ebits_value")
    assert dtypes.to_python(np.frombuffer(raw, ebits)[0], ebits) == {"st": "DEAD", "rest": 5}
    assert list(dtypes.columns(np.frombuffer(raw, ebits))["st"]) == ["DEAD"]
    assert dtypes.encode({"st": "DEAD", "rest": 5}, ebits).tobytes() == raw


def test_unions_show_every_member_and_encode_the_one_given(obj):
    target, data = obj
    spec = Spec.from_elf(data)
    dt = dtype(spec, struct_id(spec, "un"))
    assert dt.names == ("ip4", "ip6") and dt.itemsize == 16 and dt.metadata["union"]
    arr = dtypes.encode({"ip6": list(range(1, 17))}, dt)
    assert arr.tobytes() == bytes(range(1, 17))
    assert dtypes.encode({"ip4": 1}, dt).tobytes()[4:] == bytes(12)
    # anonymous members are named as C names them, straight in the parent
    anon_dt, raw = global_value(data, spec, ".data", "anon_value")
    assert anon_dt.names == ("kind", "x", "y", "p", "q")
    value = dtypes.to_python(np.frombuffer(raw, anon_dt)[0], anon_dt)
    assert value["kind"] == 2 and value["y"] == 0x100000005 and value["q"] == -9
    assert dtypes.encode({"kind": 2, "y": 0x100000005, "q": -9}, anon_dt).tobytes() == raw
    # a bitfield written after the whole word overrides just its own bits
    flags = dtype(spec, struct_id(spec, "flags"))
    assert dtypes.fields(flags) == ["raw", "a", "b"]
    raw = dtypes.encode({"raw": 0xFFFFFFFF, "a": 0}, flags).tobytes()
    first_byte = 0xF0 if target == "bpf" else 0x0F  # a: low nibble (LE), high nibble (BE)
    assert raw == bytes([first_byte, 0xFF, 0xFF, 0xFF])


def test_rodata_and_data_globals(obj):
    target, data = obj
    spec = Spec.from_elf(data)
    ro_int, raw = global_value(data, spec, ".rodata", "ro_int")
    assert dtypes.to_python(np.frombuffer(raw, ro_int)[0], ro_int) == -17
    ro_name, raw = global_value(data, spec, ".rodata", "ro_name")
    assert ro_name == np.dtype("S8") and dtypes.to_python(raw, ro_name) == "ro"
    dt, raw = global_value(data, spec, ".data", "data_int")
    assert np.frombuffer(raw, dt)[0] == 99
    with pytest.raises(BTFError, match="no data section '.kconfig'"):
        datasec(spec, ".kconfig")


def test_c_spelling(clang, tmp_path):
    source = TYPES + r"""
    const char *cp; char *const pc = 0; int (*parr)[3]; u32 arr3[3];
    int (*fn)(int, const char *); struct rec *recp; enum state st; cv_pid cv; u64 grid[2][4];
    """
    spec = Spec.from_elf(compile_c(clang, tmp_path, source))
    names = {v: c_decl(spec, spec.find(v, "var")[0].type) for v in
             ("cp", "pc", "parr", "arr3", "fn", "recp", "st", "cv", "grid")}
    assert names == {
        "cp": "const char *", "pc": "char *const", "parr": "int (*)[3]", "arr3": "u32[3]",
        "fn": "int (*)(int, const char *)", "recp": "struct rec *", "st": "enum state",
        "cv": "cv_pid", "grid": "u64[2][4]"}
    assert c_decl(spec, spec.find("grid", "var")[0].id) == "u64 grid[2][4]"


def test_function_local_struct_comes_from_dwarf(clang, tmp_path):
    source = TYPES + r"""
    unsigned long long local_layout[4];
    __attribute__((section("tp/x"), used)) int prog(void *ctx) {
        struct S { u64 pid; u64 cookie; char comm[5]; struct bits b; enum state st; } data = {};
        typedef struct { u32 a; u32 b; } pair_t;
        pair_t pair = {1, 2};
        long (*out)(void *, void *, u64, void *, u64) = (void *)25;
        data.pid = 1;
        out(ctx, 0, 0, &pair, sizeof(pair));
        local_layout[0] = sizeof(struct S);
        local_layout[1] = __builtin_offsetof(struct S, comm);
        local_layout[2] = __builtin_offsetof(struct S, b);
        local_layout[3] = __builtin_offsetof(struct S, st);
        return out(ctx, 0, 0, &data, sizeof(data));
    }
    struct bits global_bits;
    """
    data = compile_c(clang, tmp_path, source)
    assert Spec.from_elf(data).find("S") == []  # clang's BTF lacks it
    dwarf = dwarf_spec(data)
    (pair,) = dwarf.find("pair_t", "typedef")
    assert dtype(dwarf, pair.id) == np.dtype([("a", "<u4"), ("b", "<u4")])
    dt = dtype(dwarf, struct_id(dwarf, "S"))
    # the program stores sizeof/offsetof as immediates: find them in its instructions
    insns = ELF(data).section_data("tp/x")
    immediates = {struct.unpack_from("<i", insns, i + 4)[0] for i in range(0, len(insns), 8)}
    assert {dt.itemsize, dt.fields["comm"][1], dt.fields["b"][1], dt.fields["st"][1]} \
        <= immediates
    assert dt.itemsize == 40 and dt.fields["b"][1] == 24
    assert dt["comm"] == np.dtype("S5") and dtypes.fields(dt["b"]) == ["lo", "neg", "big", "c"]
    # DWARF and BTF describe the same global struct identically, bitfields included
    spec = Spec.from_elf(data)
    from_btf = dtype(spec, struct_id(spec, "bits"))
    from_dwarf = dtype(dwarf, struct_id(dwarf, "bits"))
    assert from_dwarf == from_btf and dtypes.bitfields(from_dwarf) == dtypes.bitfields(from_btf)


def test_split_btf_continues_its_base():
    base = Spec.parse(build_btf([(b"int", 1, 0, 4, [(1 << 24) | 32])], b"\0int\0shared\0"))
    # split strings start after the base's 12 bytes: "pair" at 12, "a" at 17, "b" at 19
    split_strings = b"pair\0a\0b\0"
    members = [17, 1, 0, 19, 1, 32]
    raw = build_btf([(12, 4, 2, 8, members), (0, 2, 0, 2, []), (5, 8, 0, 2, [])],
                    split_strings, named=False)
    split = Spec.parse(raw, base=base)
    assert len(split) == 5
    assert [t.id for t in split.find("shared")] == [4]  # a split type named by a base string
    pair = split.find("pair", "struct")[0]
    assert pair.id == 2 and [m.name for m in pair.members] == ["a", "b"]
    assert split.find("int")[0].id == 1  # found in the base
    assert split.type(3).kind == "ptr" and split.resolve(3).type == 2
    assert dtype(split, 2) == np.dtype([("a", "<i4"), ("b", "<i4")])


def test_signed_and_unsigned_enums_by_kind_flag():
    strings = b"\0int\0neg\0minus_one\0pos\0all_ones\0"
    at = {n: strings.find(b"\0" + n + b"\0") + 1 for n in (b"neg", b"minus_one", b"pos",
                                                           b"all_ones")}
    flag = 1 << 31
    raw = build_btf([(b"neg", 6, flag | 1, 4, [at[b"minus_one"], 0xFFFFFFFF]),
                     (b"pos", 6, 1, 4, [at[b"all_ones"], 0xFFFFFFFF])], strings)
    spec = Spec.parse(raw)
    neg, pos = spec.type(1), spec.type(2)
    assert neg.signed and neg.enumerators[0].value == -1
    assert not pos.signed and pos.enumerators[0].value == 0xFFFFFFFF
    assert dtype(spec, 1) == np.dtype("<i4") and dtypes.enum_names(dtype(spec, 1)) == {
        -1: "minus_one"}
    assert dtypes.to_python(np.array([-1], dtype(spec, 1))[0], dtype(spec, 1)) == "minus_one"
    assert dtypes.to_python(np.array([2**32 - 1], dtype(spec, 2))[0], dtype(spec, 2)) == \
        "all_ones"


def test_old_style_bitfields_carried_by_the_int_type():
    """BTF without the kind flag puts a bitfield's width and offset in its INT type."""
    strings = b"\0int\0u3\0s\0a\0b\0"
    at = {n: strings.find(b"\0" + n + b"\0") + 1 for n in (b"int", b"u3", b"s", b"a", b"b")}
    raw = build_btf([
        (b"int", 1, 0, 4, [(1 << 24) | 32]),
        (b"u3", 1, 0, 4, [(2 << 16) | 3]),  # unsigned, 3 bits starting 2 bits in
        (b"s", 4, 2, 8, [at[b"a"], 2, 4, at[b"b"], 1, 32]),
    ], strings)
    spec = Spec.parse(raw)
    dt = dtype(spec, 3)
    assert dtypes.bitfields(dt)["a"] == ("__bits0", 6, 3, np.dtype("<u4"), False)
    assert dtypes.to_python(dtypes.encode({"a": 5, "b": -2}, dt)[0], dt) == {"a": 5, "b": -2}
    assert dtypes.encode({"a": 5}, dt).tobytes()[:1] == bytes([5 << 6 & 0xFF])


def test_bad_input_says_what_it_is():
    with pytest.raises(BTFError, match="not BTF"):
        Spec.parse(b"\0" * 32)
    good = build_btf([(b"int", 1, 0, 4, [(1 << 24) | 32])], b"\0int\0")
    with pytest.raises(BTFError, match="beyond the data"):
        Spec.parse(good[:-3])
    with pytest.raises(BTFError, match="ends inside a type record"):
        Spec.parse(build_btf([(b"int", 1, 0, 4, [])], b"\0int\0"))
    with pytest.raises(BTFError, match="unknown BTF kind 31"):
        Spec.parse(build_btf([(b"int", 31, 0, 4, [])], b"\0int\0"))
    with pytest.raises(BTFError, match="not an ELF object"):
        Spec.from_elf(b"hello")
    spec = Spec.parse(good)
    with pytest.raises(BTFError, match="no BTF type with id 9"):
        spec.type(9)
    with pytest.raises(BTFError, match="void.*has no data layout"):
        dtype(spec, 0)


def build_btf(types, strings: bytes, named: bool = True) -> bytes:
    """Raw little-endian BTF: each type is (name, kind, vlen, size_or_type, extra words)."""
    words = []
    for name, kind, vlen, size, extra in types:
        name_off = strings.find(b"\0" + name + b"\0") + 1 if named else name
        words += [name_off, kind << 24 | vlen, size, *extra]  # vlen may carry the kind flag
    body = struct.pack(f"<{len(words)}I", *words)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(strings))
    return header + body + strings


@pytest.mark.skipif(not VMLINUX.exists(), reason="this kernel exposes no /sys/kernel/btf/vmlinux")
def test_vmlinux_task_struct_matches_bpftool():
    tool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    if not Path(tool).exists():
        pytest.skip("bpftool is not installed")
    spec = vmlinux()
    assert vmlinux() is spec  # parsed once
    dump = subprocess.run([tool, "btf", "dump", "file", str(VMLINUX)], capture_output=True,
                          text=True, check=True).stdout
    head = re.search(r"^\[(\d+)\] STRUCT 'task_struct' size=(\d+) vlen=\d+$", dump, re.M)
    tgid = re.search(r"^\t'tgid' type_id=\d+ bits_offset=(\d+)$", dump[head.end():], re.M)
    task = spec.find("task_struct", "struct")
    assert [t.id for t in task] == [int(head[1])]
    rows = {r.field: r for r in struct_fields(spec, "task_struct")}
    assert rows["tgid"].offset == int(tgid[1]) // 8 and rows["tgid"].c_type == "pid_t"
    assert rows["comm"].c_type == "char[16]" and rows["comm"].size == 16
    body = dump[head.end():dump.index("\n[", head.end())]
    bitfield = re.search(r"^\t'(\w+)' type_id=\d+ bits_offset=(\d+) bitfield_size=(\d+)$", body,
                         re.M)
    row = rows[bitfield[1]]
    assert (row.bit_offset, row.bits) == (int(bitfield[2]), int(bitfield[3]))
    dt = dtype(spec, task[0].id)
    assert dt.itemsize == int(head[2])
    assert bitfield[1] in dtypes.bitfields(dt)
    assert dt.fields["tgid"][1] == int(tgid[1]) // 8
    assert dt["comm"] == np.dtype("S16")
    with pytest.raises(BTFError, match="no struct or union 'task_strcut'"):
        struct_fields(spec, "task_strcut")
