"""The dinoscope dashboard (Dash): reads what the indexer stored; never needs the model to show it."""
