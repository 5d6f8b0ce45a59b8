"""The science: pure probe functions, one module per probe family. Importing registers them."""

from . import embedding

__all__ = ["embedding"]
