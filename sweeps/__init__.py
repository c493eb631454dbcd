"""Sweep presets (YAML, data not code), shipped in the wheel as ``alorectl.sweeps`` package data."""
