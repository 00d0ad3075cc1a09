"""Self-supervised fine-tuning: masked LM, whole-word and span masking, fill-in-the-middle, causal LM."""
