"""diffmem: measure and study memorization in diffusion models."""

__version__ = "0.1.0"
