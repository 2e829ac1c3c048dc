"""Analyses of finished studies: scaling-law fits, intervals over seeds, frontiers (numpy and scipy only)."""
