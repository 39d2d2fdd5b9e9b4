"""Test helpers, importable as `helpers.<module>` (pyproject's pytest `pythonpath` puts tests/ on the path):
writers of datasets in their real on-disk formats, the test servers (PostgreSQL, SLURM), the tiny model, the
tiny oracle-teacher setting, and the reference key/shape files of mdistiller's and the official checkpoints."""
