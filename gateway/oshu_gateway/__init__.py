"""oshu-gateway: the self-hosted proxy service (session API + proxy on one address), on the sidecar's core."""
