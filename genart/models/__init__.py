"""Models: the zoo of named detectors, self-describing artefacts, and export."""
