"""Integration tier: stages on small runs (harvest, train, label), torchrun, the SmolLM2 rebuild from GGUF, and
the organism builds and their reproducibility."""
