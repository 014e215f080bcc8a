"""Inheritune for LitGPT: build a small base model from the first blocks of a large one.

Kept free of heavy imports: the start-up hook imports this package in every Python process.
"""

__version__ = "0.1.0"
