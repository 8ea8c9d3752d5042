"""Experiments that wire library methods to models and data, one module per chapter."""
