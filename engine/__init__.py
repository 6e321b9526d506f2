"""Packed-binary inference: sign-bit packing, XNOR-popcount kernels, .bnn files and their runtime."""
