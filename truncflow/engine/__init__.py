"""Thin Python layer over the kernels: the flow's right-hand side, time stepping, records."""
