"""Setting up: the doctor (its report, attach prober and scratch devices), the kernelspec and
the kernel launcher."""
