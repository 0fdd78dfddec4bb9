"""Accelerate launch configs (package data)."""
