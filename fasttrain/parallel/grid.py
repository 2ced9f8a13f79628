"""The 2-D grid of mixed model + data parallelism (the lecture notes' "Mixed Model + Data
Parallelism"): K = S x D ranks run D data-parallel replicas of an S-stage pipeline.

World rank r is stage r % S of replica r // S, so a pipeline's stages sit on neighbouring ranks
(activations, sent every micro-batch, stay on short paths: one host when S ranks fit on it) and
the D copies of a stage, which all-reduce that stage's gradients once a step, are S ranks apart.
Each rank gets two sub-communicators: `pipe` (its replica's S stages, point-to-point) and `dp`
(its stage's D replicas, where DataParallel runs unchanged on the stage's own arena).
"""
from __future__ import annotations

from .comm import Communicator, LocalComm, MPIComm, ThreadComm, ThreadWorld


def split_comm(comm: Communicator, color: int, key: int) -> Communicator:
    """MPI_Comm_split for the communicator kinds: ranks passing the same color form one
    communicator, ranked by key (ties by their rank in comm). Collective over comm."""
    if isinstance(comm, LocalComm):
        return LocalComm()
    if isinstance(comm, MPIComm):
        return MPIComm(comm.comm.Split(color, key), comm.poll_interval_s)
    if isinstance(comm, ThreadComm):
        pairs = comm.allgather((color, key))
        members = sorted((r for r in range(comm.size) if pairs[r][0] == color), key=lambda r: (pairs[r][1], r))
        # the group's first member makes the group's world; one more allgather hands it around
        worlds = comm.allgather(ThreadWorld(len(members)) if comm.rank == members[0] else None)
        return ThreadComm(worlds[members[0]], members.index(comm.rank))
    raise TypeError(f"split_comm(comm): expected a LocalComm, MPIComm or ThreadComm, got {type(comm).__name__}")


class Grid:
    """`world` cut into D = world.size / stages replicas of a `stages`-stage pipeline."""

    def __init__(self, world: Communicator, stages: int):
        if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
            raise ValueError(f"pipeline_stages: expected an integer >= 1, got {stages!r}")
        if world.size % stages:
            raise ValueError(f"pipeline_stages={stages}: {world.size} ranks cannot form whole pipelines; expected "
                             f"mpiexec -n S*D, a multiple of {stages}")
        self.world, self.stages, self.replicas = world, stages, world.size // stages
        self.stage, self.replica = world.rank % stages, world.rank // stages
        if stages == 1:      # pure data parallelism: the world itself, no split
            self.pipe, self.dp = LocalComm(), world
        elif self.replicas == 1:
            self.pipe, self.dp = world, LocalComm()
        else:
            self.pipe = split_comm(world, self.replica, self.stage)
            self.dp = split_comm(world, self.stage, self.replica)

    def __repr__(self):
        return f"Grid({self.stages} stages x {self.replicas} replicas; rank {self.world.rank}: stage {self.stage}, " \
               f"replica {self.replica})"
