"""oshu-vault sidecar: a TLS-intercepting proxy that swaps sealed tokens for real keys."""
