"""prm-service: online scoring and offline jobs for process reward models."""

__version__ = "0.1.0"
