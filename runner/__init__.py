"""Experiment runner: model presets, parameter accounting, training and sweeps."""
