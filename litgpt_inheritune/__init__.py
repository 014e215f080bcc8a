"""Inheritune for LitGPT: build a small base model from the first blocks of a large one.

Kept free of heavy imports: the start-up hook imports this package in every Python process.
"""

__version__ = "0.1.0"

import os as _os

# litdata checks PyPI at import and advises `pip install -U litdata`: wrong advice under this package's pin, and a
# network call offline. Set before litdata is imported (the start-up hook imports this package first).
_os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
