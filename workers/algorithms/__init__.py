"""Algorithm math: pure tensor functions (no Ray, MLflow or files), selected by name through registries."""

from workers.algorithms.advantages import ADVANTAGE_ESTIMATORS
from workers.algorithms.losses import LOSS_AGGREGATIONS, k3_kl, ppo_clip_token_loss

__all__ = ["ADVANTAGE_ESTIMATORS", "LOSS_AGGREGATIONS", "k3_kl", "ppo_clip_token_loss"]
