"""fasttrain.settings: the default thread count shares a machine's cores among the MPI ranks a
launcher started on it, unless the launcher bound them; bad environment values are errors."""
import os

import pytest

from fasttrain import settings


@pytest.fixture
def all_cores(monkeypatch):
    """A machine of 8 cores where this process may run on all of them, no launcher variables."""
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    for var in settings._LOCAL_RANKS_VARS + ("FASTTRAIN_THREADS",):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_all_cores_without_a_launcher(all_cores):
    assert settings.local_ranks() == 1
    assert settings.default_threads() == 8 and settings._env_threads() == 8


@pytest.mark.parametrize("var", ["MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"])
@pytest.mark.parametrize("ranks, threads", [(2, 4), (3, 2), (8, 1), (16, 1)])
def test_ranks_on_one_machine_share_its_cores(all_cores, var, ranks, threads):
    all_cores.setenv(var, str(ranks))
    assert settings.local_ranks() == ranks
    assert settings._env_threads() == threads


def test_a_binding_launcher_already_shared_the_cores(all_cores):
    all_cores.setenv("MPI_LOCALNRANKS", "4")
    all_cores.setattr(os, "sched_getaffinity", lambda pid: {2, 3}, raising=False)
    assert settings.default_threads() == 2


def test_fasttrain_threads_wins_and_bad_values_are_errors(all_cores):
    all_cores.setenv("MPI_LOCALNRANKS", "4")
    all_cores.setenv("FASTTRAIN_THREADS", "3")
    assert settings._env_threads() == 3
    all_cores.setenv("FASTTRAIN_THREADS", "0")
    with pytest.raises(ValueError, match="FASTTRAIN_THREADS: expected a positive integer, got 0"):
        settings._env_threads()
    all_cores.delenv("FASTTRAIN_THREADS")
    all_cores.setenv("MPI_LOCALNRANKS", "two")
    with pytest.raises(ValueError, match="MPI_LOCALNRANKS: expected a positive integer rank count, got 'two'"):
        settings.local_ranks()
