// The sandbox image: Claude Code, and the self-hosted gateway's CA in the system trust store.
// No node wrapper: Node trusts the CA through NODE_EXTRA_CA_CERTS (set per sandbox in run.ts),
// curl/git/Python through the system store this installs.
import { Template } from "e2b";

const PROXY_BASE_URL = process.env.PROXY_BASE_URL ?? "https://gateway.example.com:8443";

export const template = Template().fromDockerfile(
  `FROM node:22-slim
RUN apt-get update && apt-get install -y curl ca-certificates git && rm -rf /var/lib/apt/lists/*
# The gateway serves its CA without an API key. If its own certificate comes from that CA
# (the default), fetch it once with -k and compare the fingerprint, or COPY the file instead.
RUN curl -fsSL ${PROXY_BASE_URL}/v1/ca.pem -o /usr/local/share/ca-certificates/oshu-gateway.crt \\
 && update-ca-certificates
RUN npm install -g @anthropic-ai/claude-code`,
);
