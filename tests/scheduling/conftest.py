"""The ``slurm_cluster`` fixture: one real single-node SLURM cluster per test session (``slurm_cluster.py``).

Tests that use it are marked ``slurm`` (``pytest -m slurm`` selects them, ``-m "not slurm"`` leaves them out) and
are skipped, with the reason, where SLURM and munge are not installed (``apt-get install -y slurm-wlm munge``)
or the daemons cannot start.
"""
from __future__ import annotations


import pytest

from slurm_cluster import SlurmCluster, SlurmUnavailable


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running cluster (``conf``, ``env``, ``partition``, ``log_dir``, ``squeue_states()``, ``wait_all_done()``);
    ``SLURM_CONF`` points at it for the whole session and is restored afterwards."""
    try:
        cluster = SlurmCluster.start()
    except SlurmUnavailable as e:
        pytest.skip(f"no SLURM test cluster: {e}")
    try:
        with pytest.MonkeyPatch.context() as mp:  # session-scoped: pytest's own set-and-restore
            for k, v in cluster.env.items():
                mp.setenv(k, v)
            yield cluster
    finally:
        cluster.stop()
