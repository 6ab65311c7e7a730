"""Scheduled deployments of the nodecore flows, and the workers that run them."""
