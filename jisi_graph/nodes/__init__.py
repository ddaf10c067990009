"""The graph's nodes, one module per step; each module's `make_*` binds a resource provider."""
