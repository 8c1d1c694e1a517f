"""Simulated benchmarks the policy is collected on and evaluated in."""
