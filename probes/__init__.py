"""The science: pure probe functions, one module per probe family. Importing registers them."""

from . import clustering, embedding, geometry, knockout, routing, targeted

__all__ = ["clustering", "embedding", "geometry", "knockout", "routing", "targeted"]
