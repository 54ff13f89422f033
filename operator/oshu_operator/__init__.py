"""oshu-vault operator: VaultSession reconciler and pod injection webhook (kopf)."""
