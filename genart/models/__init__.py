"""Models: the zoo of named detectors, self-describing artefacts, THE inference rules (P(ai), the label, the
ensemble) and export."""
