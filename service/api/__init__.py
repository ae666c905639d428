"""HTTP layer: routers, schemas, problem+json errors. Knows nothing of autograd."""
