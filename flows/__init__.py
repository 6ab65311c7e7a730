"""flows of the nodecore pipeline."""
