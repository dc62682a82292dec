"""Plumbing every stage shares: atomic writes, the CPUs this process may use, parameter constraints."""
