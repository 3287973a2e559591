"""Model catalogue: seed networks (classic.py), their knobs (knobs.py) and the run-start summary table."""
