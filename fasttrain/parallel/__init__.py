"""Parallel training over MPI: a communicator interface, our ring all-reduce (bucketed,
optionally compressed on the wire), local SGD, and pipeline (model) parallelism.
mpi4py is imported only under mpiexec."""
from .codecs import BF16, FP16, Codec, ErrorFeedback, Int4, Int8, Sign, get_codec
from .comm import Communicator, LocalComm, MPIComm, ThreadComm, ThreadWorld, get_comm, launched_world_size
from .local_sgd import LocalSGD
from .pipeline import Pipeline
from .ring import AllreduceMismatch, BucketedAllreduce, allreduce_algorithm, chunk_offsets, ring_allreduce, segment_bounds, wire_bytes

__all__ = ["Communicator", "LocalComm", "MPIComm", "ThreadComm", "ThreadWorld", "get_comm",
           "launched_world_size", "ring_allreduce", "AllreduceMismatch", "allreduce_algorithm", "BucketedAllreduce", "chunk_offsets",
           "segment_bounds", "wire_bytes", "Codec", "FP16", "BF16", "Int8", "Int4", "Sign",
           "ErrorFeedback", "get_codec", "LocalSGD", "Pipeline"]
