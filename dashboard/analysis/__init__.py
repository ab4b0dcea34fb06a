"""Pure analysis for the dashboard: projections, clusters and similarity on embedding arrays."""
