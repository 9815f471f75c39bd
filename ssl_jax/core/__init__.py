"""The one train step and what it runs on: TrainState, the step, gradient accumulation, the batch layout."""
