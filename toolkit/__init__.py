"""mcpm-mobile: MiniCPM from a checkpoint on disk to a phone."""

__version__ = "0.1.0"
