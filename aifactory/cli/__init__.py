"""Argument parsing and rendering only; one module per command group."""
