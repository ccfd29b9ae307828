"""From run dirs to curves, the Fig. 3 table and the figures (local files only)."""
