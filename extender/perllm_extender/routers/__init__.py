"""HTTP routers of the extender."""
