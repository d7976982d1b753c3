"""Setting up: the doctor's capability checks, the kernelspec and the kernel launcher."""
