"""Serving: the Ray Serve ensemble application, its HTTP API, the prediction store and metrics."""
