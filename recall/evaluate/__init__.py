"""Measuring quality: holdout splits and metrics, the backtest, the quality gate, tuning."""
