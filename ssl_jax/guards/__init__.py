"""What keeps a run safe: checkpoints, the saved config, config checks, SIGTERM, non-finite and collapse guards, the metric log."""
