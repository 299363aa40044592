"""Verify the converged site playbook on a real container."""
