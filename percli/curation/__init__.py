"""Data curation: pick a balanced training set out of a raw image-text pool.

`metaclip` holds MetaCLIP 1 (Xu et al., ICLR 2024): sub-string matching of alt-texts against a
metadata list, per-entry counts, and balancing with threshold t. `demo` holds a small synthetic
pool so the command runs with no downloads. The `*_job.py` modules are the `percli curate` jobs
(a typed Config, validate and run each; registered in percli/jobs.py).
"""
