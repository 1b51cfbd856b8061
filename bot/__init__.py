"""Mobilize: a chat bot that carries an organisation through the rollout of a new system."""

import os

# Before numpy or torch load: on a small machine their thread pools fight over the cores
# (p99 answer latency went from ~20 ms to over 100 ms), and models are never downloaded.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
