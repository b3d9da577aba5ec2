"""Training the student, in plain PyTorch (no Ray): collation, the two-term loss, the step, the
DeepSpeed config, LoRA, curves and the train stage's file layout. prime_ray.distributed.train wires
these into Ray Train."""
