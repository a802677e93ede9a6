"""Test-wide settings."""

import torch

# The tests use tiny tensors: a second intra-op thread only adds synchronization, and
# under CPU contention torch's thread pool can make a 10x3 max take milliseconds.
torch.set_num_threads(1)
