/** A static secret: its real value (hosts from secret_hosts or the gateway's catalog), or value with hosts/locations. */
export type StaticSecretSpec = string | { kind?: "static"; value: string; hosts?: string[]; locations?: ("headers" | "query" | "body")[] };
/** An AWS key pair; the gateway verifies the sandbox's SigV4 signature and re-signs with the real key. */
export interface AwsSecretSpec {
  kind: "aws";
  fields: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  hosts: string[];
}
/** An OAuth2 client; the gateway fetches/refreshes the access token and injects it for `hosts`. */
export interface OAuth2SecretSpec {
  kind: "oauth2";
  fields: {
    tokenUrl: string; clientId: string; clientSecret?: string; refreshToken?: string;
    scope?: string; audience?: string; clientAuth?: "basic" | "post";
  };
  hosts: string[];
}
/** A Google service account: `fields` is the key file Google gives you (type, private_key, client_email, token_uri...). */
export interface GcpServiceAccountSecretSpec {
  kind: "gcpServiceAccount";
  fields: Record<string, string>;
  hosts: string[];
}
export type SecretSpec = StaticSecretSpec | AwsSecretSpec | OAuth2SecretSpec | GcpServiceAccountSecretSpec;
export type SecretKind = "static" | "aws" | "oauth2" | "gcpServiceAccount";

/** What a sandbox gets for one secret (never real material). */
export interface SecretCredentials {
  kind: SecretKind;
  /** The primary sealed token (the AWS access key id, the bearer token, the agent key's private_key_id). */
  sealed: string;
  /** Variables the sandbox sets (AWS: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN). */
  env: Record<string, string>;
  /** Google only: the agent's key file; its private key is a throwaway made for this session. */
  agent_json?: Record<string, string>;
  /** Google only: variables that must hold the path of that file. */
  agent_json_env?: string[];
}

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
  /** Per secret: its kind, sealed token, env map, and for Google the agent key file. */
  secrets: Record<string, SecretCredentials>;
  expires_at: string;
  idle_ttl_seconds: number;
  proxy_url: string;
  ca_url: string;
}

export interface SessionInfo {
  session_id: string;
  secrets: Record<string, { kind: SecretKind; hosts: string[]; locations: string[] }>;
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

/** Where sandboxFiles() places agent key files by default. */
export declare const DEFAULT_CREDENTIALS_DIR: string;

/** The environment for a sandbox: each secret's env, HTTP(S)_PROXY and lowercase twins, NO_PROXY, CA variables;
 * a Google service account's GOOGLE_APPLICATION_CREDENTIALS points into `credentialsDir`. */
export declare function sandboxEnv(
  session: Session,
  options?: { caPath?: string; noProxy?: string; credentialsDir?: string },
): Record<string, string>;

/** Path -> content of the files the sandbox must hold (Google agent key files). */
export declare function sandboxFiles(session: Session, options?: { credentialsDir?: string }): Record<string, string>;

export declare function awsSecret(o: { accessKeyId: string; secretAccessKey: string; sessionToken?: string; hosts: string[] }): AwsSecretSpec;
export declare function oauth2Secret(o: OAuth2SecretSpec["fields"] & { hosts: string[] }): OAuth2SecretSpec;
export declare function gcpServiceAccountSecret(o: { keyFile: string | Record<string, string>; hosts: string[] }): GcpServiceAccountSecretSpec;

export declare class SecretsProxyClient {
  constructor(options?: ClientOptions);
  readonly baseUrl: string;
  createSession(options: CreateSessionOptions): Promise<Session>;
  getSession(sessionId: string): Promise<SessionInfo>;
  deleteSession(sessionId: string): Promise<void>;
  caPem(): Promise<string>;
}
