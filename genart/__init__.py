"""genart: tell AI-generated images from real ones, trained and served on Ray."""

__version__ = "0.1.0"
