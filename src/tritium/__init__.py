"""tritium: an inference server that speaks Triton's protocols, installable with pip."""

__version__ = "0.1.0"
