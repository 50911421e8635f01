"""Notebook-side views of a run. Subscribes to the run's events; never drives training."""
