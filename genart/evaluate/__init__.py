"""Evaluation: metrics overall and per generator, calibration, robustness, protocols, ensemble reports. It
measures and reports; the rules it measures (P(ai), the label, the ensemble) live in :mod:`genart.models`."""
