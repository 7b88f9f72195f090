"""xfel-reduce: reduce European XFEL runs to validated science data."""

__version__ = "0.1.0"
