"""One module per page: its layout and the thin callbacks that connect it to dashboard logic."""
