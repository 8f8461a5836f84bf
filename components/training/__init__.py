"""The one training loop every family shares, distributed with Ray Train (TorchTrainer)."""
