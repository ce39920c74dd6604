"""Evaluation: metrics (numbers only), calibration, and the files a run writes."""
