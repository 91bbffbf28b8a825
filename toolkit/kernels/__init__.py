"""Compiled host kernels for conversion (TVM TIR, built once per machine into the kernel cache,
``support/cache.py``): each is bit-exact with a numpy reference beside the format it writes."""
