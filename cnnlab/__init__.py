"""cnnlab: a config-driven experiment runner for image-classification CNNs."""

from cnnlab.resolvers import register_resolvers

__version__ = "0.2.0"

# The built-in configs derive values with `${cnnlab.*:...}`; every entry point must know the resolvers.
register_resolvers()
