"""Algorithm math: pure tensor functions (no Ray, MLflow or files), selected by name through registries.

Importing this package registers the built-in algorithms (GRPO, Dr. GRPO, GiGPO) and loss aggregations.
"""

from workers.algorithms import gigpo, grpo  # noqa: F401  (registrations)
from workers.algorithms.losses import LOSS_AGGREGATIONS
from workers.algorithms.registry import ALGORITHMS, AdvantageOptions, Algorithm, register_algorithm

__all__ = ["ALGORITHMS", "LOSS_AGGREGATIONS", "AdvantageOptions", "Algorithm", "register_algorithm"]
