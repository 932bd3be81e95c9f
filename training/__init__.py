"""Training, evaluation and corpus handling for serdemo models (uses ``serdemo``, never the reverse)."""
