"""Measuring a detector: dataset layouts, metrics, the paper's tables and numbers, synthetic data, the demo."""
