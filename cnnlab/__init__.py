"""cnnlab: a config-driven experiment runner for image-classification CNNs."""

from cnnlab.resolvers import register_resolvers

__version__ = "0.2.0"

# The built-in configs derive values with `${cnnlab.*:...}`; every entry point must know the resolvers.
register_resolvers()

# From Python (cnnlab/api.py), imported on first use so `import cnnlab` stays light. `run` trains: the name
# `cnnlab.train` is the package of training code.
_API = {"run": "train", "load": "load", "compare": "compare", "Run": "Run", "Trained": "Trained"}


def __getattr__(name: str):
    if name in _API:
        from cnnlab import api

        return getattr(api, _API[name])
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
