"""The dinoscope indexer: scans image folders and stores DINOv2 embeddings, patch grids and thumbnails."""
