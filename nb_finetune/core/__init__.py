"""Headless core: never imports IPython, ipywidgets, bokeh, jupyter_bokeh or traitlets (see ruff.toml here)."""
