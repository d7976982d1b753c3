"""Kernel I/O: bpf(2), perf events, perf and ring readers, links, BTF, host facts (:mod:`.host`)."""
