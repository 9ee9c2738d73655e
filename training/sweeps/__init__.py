"""Sweeps: the seed's tuning procedures run as judged experiments (templates, decision rules, their runs); issue 19."""
