"""Deep-learning framework benchmark matrix: the same three tasks in every framework."""

__version__ = "0.1.0"
