"""Tuneboard's manage.py commands."""
