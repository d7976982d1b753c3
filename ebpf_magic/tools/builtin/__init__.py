"""The tools that come with ebpf_magic, one module each, each declaring ``TOOL``."""
