"""Datasets: reading and checking files (files), token statistics (stats), and their services, forms and views."""
