"""Executors: run a stage's work here or as Slurm job arrays, follow it, and say what each task did.

``config`` (the ``executor`` settings), ``jobs`` (a job's folder), ``slurm`` (sbatch, squeue, sacct), ``task``
(the array task's entry), ``submit`` (submit, wait, states); ``extract`` and ``probe`` split their stage's
work into tasks.
"""
