"""Model layer: loading, prompts for the three modes, the output parser."""
