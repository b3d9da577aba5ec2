"""The Ray layer, and the only package of prime-ray that imports ray.

It wires the plain compute (engine, memory, traces, training) into Ray Serve deployments, Ray Data
pipelines and Ray Train trainers.
"""
