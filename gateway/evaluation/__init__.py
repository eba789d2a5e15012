"""Measuring retrieval and refusal: golden sets, metrics, dataset importers, calibration."""
