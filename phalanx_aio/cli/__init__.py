"""Command-line interface: ``phalanx-aio``."""
