"""tasks of the nodecore pipeline."""
