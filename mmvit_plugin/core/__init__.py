"""Framework-free core: architecture table and geometry, block specs, relative positions."""
