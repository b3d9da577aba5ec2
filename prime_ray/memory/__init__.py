"""The user's memory for a query: episodic (retrieved history items) and semantic (a profile by G).

Plain compute: retrieval.py (BM25 / recent / embeddings), profiles.py, build.py, store.py
(`memory.parquet`, read through `read_memory`).
"""
