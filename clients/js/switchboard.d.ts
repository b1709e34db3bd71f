// Types of switchboard.js (docs/clients.md, docs/protocol.md).

export declare const CloseCode: Readonly<{
  UNAUTHORIZED: 4001; NO_HELLO: 4002; PROTOCOL_VIOLATION: 4003; TOO_SLOW: 4004;
  PARTITION_MOVED: 4005; DRAINING: 4006; RATE_LIMITED: 4008; TOO_MANY_DEVICES: 4009;
}>;

/** A stable error code of the protocol, or `stopped`/`unsubscribed` from the client. */
export type ErrorCode =
  | "bad_json" | "unknown_type" | "invalid_field" | "not_member" | "too_large"
  | "rate_limited" | "unavailable" | "too_many_devices" | "forbidden"
  | "too_many_channels" | "unauthorized" | "not_found" | "conflict" | "internal"
  | "stopped" | "unsubscribed";

export declare class SwitchboardError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string);
}

export interface CursorStore {
  get(key: string): string | null;
  set(key: string, value: string): void;
  delete(key: string): void;
}
export declare class MemoryCursorStore implements CursorStore {
  get(key: string): string | null; set(key: string, value: string): void; delete(key: string): void;
}
export declare class LocalStorageCursorStore implements CursorStore {
  constructor(storage?: Storage, prefix?: string);
  get(key: string): string | null; set(key: string, value: string): void; delete(key: string): void;
}

export type Target = { user: string } | { conversation: string } | { channel: string };
export type Kind = "chat" | "ephemeral";

export interface Message {
  msg_id: string;
  conversation_id: string;
  from: string;
  from_device: string;
  kind: Kind;
  body: unknown;
  sent_at_ms: number;
  /** Chat messages (and every channel publication): the position after it. */
  cursor?: string;
  /** Delivered by a resume or a channel recovery rather than live. */
  replay: boolean;
  /** Set on a channel publication. */
  channel?: string;
  /** An anycast publication: this subscriber was chosen; answer `handled`. */
  anycast?: boolean;
}

export interface Subscribed { channel: string; cursor: string; recovered: boolean }

export type State = "connecting" | "connected" | "resuming" | "disconnected";
/** `serverId` is set on a welcome, `synced` when a resume caught up, `code` on a close. */
export interface StateEvent { state: State; serverId?: string; resumed?: boolean; synced?: boolean; code?: number; cursor?: string }

export interface Route { user_id: string; partition: number; server_id: string; ws_url: string; epoch: number }

export interface ClientOptions {
  /** Coordinator base URLs (or one comma-separated string); tried in turn. */
  coordinators: string | string[];
  userId: string;
  token: string;
  /** Called before the token expires (and once after a 4001): a fresh token, or null. */
  refreshToken?: () => Promise<string | null>;
  /** Default: a stored one, else random. */
  deviceId?: string;
  /** Default: globalThis.WebSocket (Node 20: run with --experimental-websocket). */
  WebSocket?: unknown;
  fetch?: typeof fetch;
  /** Default: localStorage in browsers, memory elsewhere. */
  cursorStore?: CursorStore;
  /** A server that does not say welcome within this is given up on (default 10000 ms). */
  connectTimeoutMs?: number;
  /** Longest pause between reconnect attempts (default 5000 ms). */
  maxBackoffMs?: number;
  /** How many recent msg_ids are remembered to drop duplicates (default 10,000). */
  dedupe?: number;
}

export declare class Api {
  constructor(options: { coordinators: string | string[]; token?: string; fetch?: typeof fetch });
  token: string;
  /** With `unreachable`, reports that server and waits up to `waitMs` for a map without it (docs/protocol.md, "Failover"). */
  route(userId: string, report?: { unreachable?: string; waitMs?: number }): Promise<Route>;
  base(userId: string): Promise<string>;
  conversations(base: string): Promise<{ conversations: { conversation_id: string; members: string[] }[] }>;
  createConversation(base: string, members: string[], conversationId?: string): Promise<{ conversation_id: string; members: string[] }>;
  history(base: string, conversationId: string, page?: { before?: string; limit?: number }): Promise<{ messages: Message[]; next_before: string | null }>;
  allHistory(base: string, conversationId: string, pageSize?: number): AsyncGenerator<Message>;
  publish(base: string, publication: {
    to: { users: string[] } | { conversation: string } | { channel: string };
    kind?: Kind; body: unknown; from: string; idempotency_key: string;
  }): Promise<{ msg_id: string }>;
  publishBatch(base: string, items: unknown[]): Promise<{ results: ({ msg_id: string } | { error: { code: ErrorCode; message: string } })[] }>;
}

/** A user's presence: online while at least one device has a session. */
export interface UserPresence {
  user: string;
  online: boolean;
  devices: number;
  /** When the user's last session ended (unix ms), if one ever did. */
  last_seen_ms?: number;
}

/** One page of a presence channel's users, in user id order. */
export interface ChannelPresence {
  channel: string;
  users: string[];
  /** `after` of the next page; absent on the last one. */
  next_after?: string;
}

export interface Membership {
  channel: string;
  user: string;
}

export declare class Client {
  constructor(options: ClientOptions);
  readonly api: Api;
  readonly deviceId: string;
  readonly state: State;
  /** The chat cursor a reconnect resumes from. */
  readonly cursor: string | null;
  channelCursor(channel: string): string | null;
  connect(): void;
  close(): void;
  /** Resolves with the msg_id once Kafka has it; rejects with a SwitchboardError. */
  send(
    to: Target,
    body: unknown,
    options?: { kind?: Kind; clientMsgId?: string; anycast?: boolean; key?: string },
  ): Promise<string>;
  /** To one subscriber of a presence channel; `key` keeps the same one while it stays. */
  anycast(channel: string, body: unknown, options?: { kind?: Kind; key?: string; clientMsgId?: string }): Promise<string>;
  /** The app is done with an anycast message: it goes to no other subscriber. False if not connected. */
  handled(channel: string, msgId: string): boolean;
  subscribe(channel: string): Promise<Subscribed>;
  unsubscribe(channel: string): void;
  /** Your contacts' presence; with `watch`, `presence` events (renewed after reconnects). */
  presence(users: string[], options?: { watch?: boolean }): Promise<UserPresence[]>;
  unwatch(users: string[]): void;
  /** A page of a presence channel's users (you must be subscribed to it). */
  channelPresence(channel: string, page?: { after?: string; limit?: number }): Promise<ChannelPresence>;
  on(event: "presence", fn: (p: UserPresence) => void): () => void;
  on(event: "join", fn: (m: Membership) => void): () => void;
  on(event: "leave", fn: (m: Membership) => void): () => void;
  on(event: "message", fn: (m: Message) => void): () => void;
  on(event: "state", fn: (s: StateEvent) => void): () => void;
  on(event: "subscribed", fn: (s: Subscribed) => void): () => void;
  on(event: "error", fn: (e: Error) => void): () => void;
}
