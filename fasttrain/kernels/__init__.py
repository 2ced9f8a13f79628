"""NumPy reference kernels: the spec every other backend is held to. See backend.FAMILIES."""
