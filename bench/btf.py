"""Kernel BTF parse speed: the lazy numpy index vs reading the file and vs decoding every type.

In the same run, best of ``REPEAT``:

* (a) reading ``/sys/kernel/btf/vmlinux`` into memory, the floor;
* (b) ``Spec.parse``: the index of where each record starts, its kind and name;
* (c) decoding every type record into a ``Type``, what an eager reader does up front;
* the first queries a ``%bpf struct task_struct`` listing makes: ``find``, ``dtype`` and
  ``struct_fields`` on a freshly parsed spec.

Needs only read access to the file: ``.venv/bin/python bench/btf.py``.
"""

from __future__ import annotations

from pathlib import Path

from timing import REPEAT, best

from ebpf_magic.kernel.btf import Spec, dtype, struct_fields

PATH = Path("/sys/kernel/btf/vmlinux")


def main() -> None:
    raw = PATH.read_bytes()
    spec = Spec.parse(raw)
    t_read = best(PATH.read_bytes)
    t_parse = best(lambda: Spec.parse(raw))
    t_all = best(lambda: [t for t in Spec.parse(raw)], repeat=2)

    fresh = [Spec.parse(raw) for _ in range(REPEAT)]  # each timed query run starts cold

    def first_queries() -> None:
        spec = fresh.pop()
        (task,) = spec.find("task_struct", "struct")
        dtype(spec, task.id)
        struct_fields(spec, "task_struct")

    t_queries = best(first_queries)
    print(f"vmlinux BTF: {len(raw) / 1e6:.1f} MB, {len(spec) - 1} types")
    print(f"(a) read file            {t_read * 1e3:8.1f} ms")
    print(f"(b) Spec.parse (index)   {t_parse * 1e3:8.1f} ms   {t_parse / t_read:6.1f}x (a)")
    print(f"(c) decode every type    {t_all * 1e3:8.1f} ms   {t_all / t_parse:6.1f}x (b)")
    print(f"task_struct find + dtype + struct_fields, cold: {t_queries * 1e3:.1f} ms")
    verdict = "under" if t_parse < 1.0 else "OVER"
    print(f"parse is {verdict} the 1 s budget ({t_parse:.3f} s)")


if __name__ == "__main__":
    main()
