"""Imported by the background-job fork server: compiles UMAP's numba code once, so every job starts at once."""

from dashboard.analysis.projection import warm_up

warm_up()
