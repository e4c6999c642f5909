"""Names of the files a trial directory holds: what the runner writes and the driver, CLI and tracking read.

Apart from the runner so that reading a trial directory does not import the trial stack (torch models,
transformers' modeling code): the sweep driver never runs a trial itself and starts faster without it.
"""

SCORE_FILE = "score.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"
TRAINED_FILE = "trained.safetensors"
"""The trained tensors (only those that trained) of a finished training trial: what `layersweep export` reads."""
