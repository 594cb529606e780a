"""Training: the per-worker loop, the TorchTrainer factory, and the driver that makes a run an artefact."""
