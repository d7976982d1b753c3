"""BTF, the BPF Type Format: kernel and BPF object types as numpy dtypes and C spellings."""

from .dtypes import StructField, c_decl, datasec, dtype, struct_fields, type_fields
from .layout import definition, struct
from .spec import BTFError, Member, Spec, Type, vmlinux

__all__ = ["BTFError", "Member", "Spec", "StructField", "Type", "c_decl", "datasec",
           "definition", "dtype", "struct", "struct_fields", "type_fields", "vmlinux"]
