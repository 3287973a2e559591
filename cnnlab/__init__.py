"""cnnlab: a config-driven experiment runner for image-classification CNNs."""

from cnnlab.data.resolvers import register_resolvers

__version__ = "0.1.0"

# Dataset YAMLs derive class counts and names with `${cnnlab.*:...}`; every entry point must know them.
register_resolvers()
