"""Dispatching the experiment graph: jobs, locks, the local and SLURM launchers."""
