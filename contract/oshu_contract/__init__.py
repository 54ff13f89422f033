"""The operator-sidecar contract: what the operator writes and the sidecar reads, in one neutral home.

Both `oshu_operator` and `oshu_sidecar` import this package; neither imports the other, and
nothing here imports either (checked by tests/contract/test_layout.py and import-linter):

- `session`: the session file's schema: `Session`, `SecretBinding`, the one parser
  (`parse_session`, `loads_session`, `load_session_file`), the one writer (`Session.to_json`),
  the validated constructors `new_binding` / `new_kind_binding` and `recorded_tokens` for a previous file.
- `checks`: the per-entry checks shared by the reader, the writer and the operator's spec parser.
- `kinds`: credential kinds (`Kind`: static, aws, oauth2, gcpServiceAccount), the fields each
  carries, which are real material and which have sealed stand-ins; the agent's copy of a
  Google service-account JSON.
- `hosts`: host patterns (`hosts` and `egress` entries).
- `tokens`: the sealed-token format (`SEALED_` + 160 random bits): minted and recognized here only.
- `locations`: where a sealed token may be substituted (`Location`), the enum the CRD's
  `locations` field lists and the sidecar maps to its substitution code.
- `pki`: the session CA the operator makes and the leaves the sidecar mints from it; the
  throwaway RSA key of a gcpServiceAccount session.
"""
