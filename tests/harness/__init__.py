"""Test harness: run a real gateway as a subprocess, and verify what reached its sink."""
