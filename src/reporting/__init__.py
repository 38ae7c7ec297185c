"""Reporting: the plots and model table of a results folder, and the metrics DVC reads."""
