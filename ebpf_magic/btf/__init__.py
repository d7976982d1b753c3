"""BTF, the BPF Type Format: kernel and BPF object types as numpy dtypes and C spellings."""

from .dtypes import StructField, c_decl, datasec, dtype, struct_fields
from .spec import BTFError, Member, Spec, Type, vmlinux

__all__ = ["BTFError", "Member", "Spec", "StructField", "Type", "c_decl", "datasec", "dtype",
           "struct_fields", "vmlinux"]
