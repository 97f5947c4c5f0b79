"""graphssl: declarative experiment graphs for self-supervised vision pretraining."""

__version__ = "0.1.0"
