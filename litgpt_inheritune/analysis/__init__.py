"""Lazy-layer analysis of a reference (``lazy_layers``) and the choice of a child's blocks (``selection``)."""
