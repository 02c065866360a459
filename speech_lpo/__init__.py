"""speech_lpo: Linear Preference Optimization for speech language models."""

__version__ = "0.1.0"
