"""Architecture builders: each takes the input shape, the class count and flat keyword arguments."""
