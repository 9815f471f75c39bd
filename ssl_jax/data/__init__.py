"""Input pipeline: tfds -> multi-crop views -> global batches (imports tensorflow)."""
