"""Test-session settings shared by every test file."""

import torch

# The tests run tiny tensors, where intra-op threading only adds synchronisation: on a shared
# 2-core machine one thread is ~100x faster per op than two contending ones. Benchmarks and the
# CLI choose their own thread counts.
torch.set_num_threads(1)
