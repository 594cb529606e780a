"""Evaluation: metrics overall and per generator, calibration, robustness, protocols, ensembles, reports."""
