"""Comparison views and the study report (installed as archspace.dashboards)."""
