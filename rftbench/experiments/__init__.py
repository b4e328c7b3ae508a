"""Experiments files: where they are found (`files`) and what their named grids expand to (`grids`)."""
