"""BTF, the BPF Type Format: kernel and BPF object types as numpy dtypes and C spellings."""

from ebpf_magic.kernel.btf.dtypes import (
           StructField,
           c_decl,
           datasec,
           dtype,
           struct_fields,
           type_fields,
)
from ebpf_magic.kernel.btf.layout import definition, struct
from ebpf_magic.kernel.btf.spec import BTFError, Member, Spec, Type, digest, vmlinux

__all__ = ["BTFError", "Member", "Spec", "StructField", "Type", "c_decl", "datasec",
           "definition", "digest", "dtype", "struct", "struct_fields", "type_fields", "vmlinux"]
