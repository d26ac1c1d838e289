"""Billing-grade index journal: append-only, hash-chained readings of every energy register, and exports."""
