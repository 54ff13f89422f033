/** A secret: its real value (hosts from secret_hosts or the gateway's catalog), or value with hosts/locations. */
export type SecretSpec = string | { value: string; hosts?: string[]; locations?: ("headers" | "query" | "body")[] };

export interface CreateSessionOptions {
  secrets: Record<string, SecretSpec>;
  secret_hosts?: string[];
  allowed_egress?: string[];
  ttl_seconds?: number;
  idle_ttl_seconds?: number;
}

export interface Session {
  session_id: string;
  token: string;
  sealed_secrets: Record<string, string>;
  expires_at: string;
  idle_ttl_seconds: number;
  proxy_url: string;
  ca_url: string;
}

export interface SessionInfo {
  session_id: string;
  secrets: Record<string, { hosts: string[]; locations: string[] }>;
  allowed_egress: string[] | null;
  created_at: string;
  expires_at: string;
  idle_ttl_seconds: number;
  idle_expires_at: string;
  last_used_at: string;
  request_count: number;
}

export interface ClientOptions {
  /** Gateway base URL; default process.env.PROXY_BASE_URL. */
  baseUrl?: string;
  /** Management API key; default process.env.SECRETS_PROXY_API_KEY. */
  apiKey?: string;
  /** PEM CA to trust for the gateway's own certificate (Node only; otherwise the runtime's trust store). */
  ca?: string | Buffer;
  /** Per-request timeout in milliseconds (default 30000). */
  timeoutMs?: number;
}

export declare class SecretsProxyError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string);
}

/** The CA variables a sandbox needs (as the Kubernetes webhook injects them). */
export declare const CA_ENV_VARS: readonly string[];

/** The environment for a sandbox: sealed values, HTTP(S)_PROXY and lowercase twins, NO_PROXY, CA variables. */
export declare function sandboxEnv(session: Session, options?: { caPath?: string; noProxy?: string }): Record<string, string>;

export declare class SecretsProxyClient {
  constructor(options?: ClientOptions);
  readonly baseUrl: string;
  createSession(options: CreateSessionOptions): Promise<Session>;
  getSession(sessionId: string): Promise<SessionInfo>;
  deleteSession(sessionId: string): Promise<void>;
  caPem(): Promise<string>;
}
