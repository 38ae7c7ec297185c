"""Cluster: what a node can give a job, the results lock, weight checks, and the source files each rule runs."""
