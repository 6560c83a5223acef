"""bcr-memory: exact long-context KV-cache experiments on Qwen-family models."""

import os

# OpenMP threads that spin while waiting make a 2-core machine 10-30x slower as soon as a second
# process competes for the cores (measured: tiny-model TTFT at 1K tokens 1.5 s spinning vs 0.17 s
# passive).  Must be set before torch initialises OpenMP, hence here, on first import of bcr.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
