"""cnnlab: a config-driven experiment runner for image-classification CNNs."""

__version__ = "0.1.0"
