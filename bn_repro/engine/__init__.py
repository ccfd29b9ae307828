"""Training: the step, the loop, the run state a checkpoint holds, the fast path and DDP."""
