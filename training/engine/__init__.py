"""Tuneboard's training engine: pure Python (no Django), one LoRA/QLoRA SFT job in, JSON-lines events out."""
