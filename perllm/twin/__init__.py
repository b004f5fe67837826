"""GPU-free digital twin: the world model serving Prometheus metrics for a cluster."""
