"""Datasets and pairs."""
