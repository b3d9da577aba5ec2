"""Trace synthesis (the self-distillation data): rationalization by G, verification, filters.

Plain compute: synthesis.py (one user's examples against any engine or Serve handle), filters.py
(pure verdicts), stats.py, store.py (`traces.parquet`, kept traces through `read_kept_traces`).
"""
