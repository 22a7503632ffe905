"""Training: the recipe (two phases), checkpoints, the training log, memory options."""
