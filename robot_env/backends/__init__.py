"""The backend contract: the interface every backend implements, its spec, and the registry of backends."""
