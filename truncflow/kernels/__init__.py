"""Numba kernels: plain arrays in, plain arrays out; no Python objects, no I/O.

Every kernel processes the points in chunks of :func:`config.chunk_size` and
returns one partial result per chunk (or writes per-point outputs), so a backend
can run it on any slice of the points and merge the partial results in order.
"""
