"""twin: a digital-twin map server for a city's municipal assets."""

__version__ = "0.1.0"
