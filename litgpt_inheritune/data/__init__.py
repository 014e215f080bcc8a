"""Data: deterministic token-budget subsets of a corpus (``subset``, ``sampler``), the multi-domain LitGPT data
module (``mixture``) and Sheared-LLaMA's dynamic batch loading rule (``dbl``)."""
