"""Supervised fine-tuning on labelled data."""
