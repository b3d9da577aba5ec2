"""Serving a finished job's students: one base model with its LoRA adapters, and the job's memory.

Plain Python (no Ray): `schemas` (the request and answer documents, shared by the gateway, the Serve
app and the SDK), `memory` (profiles and an episodic index per user, growing with appended history),
`student` (prompt, adapter-selected generation, parsed answer). `prime_ray.distributed.student` puts
it on Ray Serve.
"""
