"""Tasks: a dataset of prompts with reference answers, plus a plain reward function."""
