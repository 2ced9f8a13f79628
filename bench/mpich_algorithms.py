"""MPICH's Allreduce algorithm chosen at run time, through the MPI tool interface (MPI_T), so the
benchmarks can interleave MPICH's algorithms with ours round by round in ONE job instead of one
mpiexec job per algorithm (MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM in the environment is read once, at
MPI_Init). Separate jobs land on differently loaded moments of a shared machine: our own medians
spread 0.21-0.52 ms over four jobs of one cell (session 12), far more than the algorithms differ.

mpi4py has no MPI_T bindings; the functions are called through ctypes in the MPI library mpi4py
loaded (found in /proc/self/maps, so it is the same library, the same cvar). The cvar is an MPI_INT
whose values are the positions of the algorithms in its description (auto, nb, smp,
recursive_doubling, ...): MPICH gives it no MPI_T enum. Checked (session 13, MPICH 5.0.2): the
value read through MPI_T in a job launched with each name in the environment is that name's
position, and a write takes effect on the next call on every communicator, COMM_WORLD included
(float32 sums at 3, 4 and 6 ranks: after a write, ring / tree / recursive_multiplying give the same
bits as a job with that name in the environment, and the switch goes back and forth in one job;
MPICH does not cache the choice per communicator). tests/test_dist_mpi.py checks both.

    algs = MpichAllreduce()          # raises MpiTUnavailable (with the reason) on another MPI
    algs.set("ring")                 # on every rank, between calls: Allreduce is collective
    comm.Allreduce(...)
    algs.set("auto")                 # MPICH's own choice (the default)
"""
from __future__ import annotations

import ctypes
import re

CVAR = "MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM"


class MpiTUnavailable(RuntimeError):
    """MPICH's allreduce cvar cannot be set at run time here (another MPI, or MPI_T failed)."""


def _loaded_libmpi() -> str:
    with open("/proc/self/maps") as f:
        libs = sorted({ln.split()[-1] for ln in f if "/libmpi" in ln and ".so" in ln})
    if not libs:
        raise MpiTUnavailable("no libmpi*.so mapped in this process (import mpi4py.MPI first)")
    return libs[0]


class MpichAllreduce:
    """Read and write MPICH's MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM in this process."""

    def __init__(self):
        from mpi4py import MPI

        version = MPI.Get_library_version()
        if "MPICH" not in version:
            raise MpiTUnavailable(f"{CVAR} is MPICH's; this MPI is {version.splitlines()[0].strip()!r}")
        try:
            lib = ctypes.CDLL(_loaded_libmpi(), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise MpiTUnavailable(f"cannot open the MPI library through ctypes: {e}") from None
        self._lib = lib
        provided = ctypes.c_int()
        self._check("MPI_T_init_thread", lib.MPI_T_init_thread(0, ctypes.byref(provided)))
        self._index = ctypes.c_int()
        self._check(f"MPI_T_cvar_get_index({CVAR})", lib.MPI_T_cvar_get_index(CVAR.encode(), ctypes.byref(self._index)))
        self.names = self._names_from_description()
        self._handle, count = ctypes.c_void_p(), ctypes.c_int()
        self._check("MPI_T_cvar_handle_alloc",
                    lib.MPI_T_cvar_handle_alloc(self._index, None, ctypes.byref(self._handle), ctypes.byref(count)))
        if count.value != 1:
            raise MpiTUnavailable(f"{CVAR}: expected one value, MPI_T says {count.value}")
        if not 0 <= self._read() < len(self.names):
            raise MpiTUnavailable(f"{CVAR} reads {self._read()}, outside the {len(self.names)} names of its description")

    @staticmethod
    def _check(what: str, rc: int) -> None:
        if rc != 0:
            raise MpiTUnavailable(f"{what} returned error {rc}")

    def _names_from_description(self) -> list[str]:
        """The algorithm names in the order of the cvar's description ('auto - ...', 'nb - ...', ...):
        MPICH numbers them in that order."""
        name, desc = ctypes.create_string_buffer(256), ctypes.create_string_buffer(8192)
        name_len, desc_len = ctypes.c_int(len(name)), ctypes.c_int(len(desc))
        verbosity, datatype, binding, scope = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        enum = ctypes.c_void_p()
        self._check("MPI_T_cvar_get_info", self._lib.MPI_T_cvar_get_info(
            self._index, name, ctypes.byref(name_len), ctypes.byref(verbosity), ctypes.byref(datatype),
            ctypes.byref(enum), desc, ctypes.byref(desc_len), ctypes.byref(binding), ctypes.byref(scope)))
        names = re.findall(r"^\s*([a-z][a-z0-9_]*)\s+- ", desc.value.decode(errors="replace"), re.MULTILINE)
        if not names or names[0] != "auto" or len(set(names)) != len(names):
            raise MpiTUnavailable(f"{CVAR}: cannot read the algorithm list from its description "
                                  f"{desc.value.decode(errors='replace')[:200]!r}")
        return names

    def _read(self) -> int:
        value = ctypes.c_int(-1)
        self._check("MPI_T_cvar_read", self._lib.MPI_T_cvar_read(self._handle, ctypes.byref(value)))
        return value.value

    def get(self) -> str:
        """The algorithm MPICH's Allreduce uses now ('auto': its own choice)."""
        return self.names[self._read()]

    def set(self, name: str) -> None:
        """Use algorithm `name` from the next Allreduce on ('default' is 'auto'). Every rank must set the
        same one before the same call."""
        name = "auto" if name == "default" else name
        if name not in self.names:
            raise ValueError(f"MpichAllreduce.set(name={name!r}): expected one of {', '.join(self.names)} (or 'default')")
        value = ctypes.c_int(self.names.index(name))
        self._check(f"MPI_T_cvar_write({name})", self._lib.MPI_T_cvar_write(self._handle, ctypes.byref(value)))

    def close(self) -> None:
        if self._handle.value:
            self._lib.MPI_T_cvar_handle_free(ctypes.byref(self._handle))
            self._lib.MPI_T_finalize()
