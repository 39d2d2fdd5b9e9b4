"""The training engine: hardware, DDP, train state and checkpoints, the teacher, the step and the Trainer.

Tasks call `run(rc)` (one run, resumable) and the pieces below it; nothing here knows about tasks."""
