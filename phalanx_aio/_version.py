"""The library's version, in a leaf module that any package may import."""

__version__ = "0.1.0.dev0"
