"""deployments of the nodecore pipeline."""
