// A promise-based QMP client for tsvirt's monitor and QEMU's alike:
//   const qmp = await QmpClient.connect('/run/vm.qmp');
//   const status = await qmp.execute('query-status');
//   qmp.on('event', (e) => ...);            // every event
//   qmp.on('STOP', (data, timestamp) => ...); // one event by name
// Replies are matched to requests by an id the client assigns; every wait is bounded.
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { JsonMessageStream, type JsonValue } from './json-stream.js';
import type { QmpErrorClass, QmpEventMessage, QmpGreeting } from './protocol.js';

export interface QmpClientOptions {
  /** Bound on connecting plus negotiating, and the default bound on each command (ms). */
  timeoutMs?: number;
  /** Capabilities to enable during negotiation (e.g. ['oob']). */
  capabilities?: string[];
}

/** An error reply from the server. */
export class QmpCommandError extends Error {
  constructor(readonly command: string, readonly errorClass: QmpErrorClass | string, readonly desc: string) {
    super(`${command}: ${errorClass}: ${desc}`);
    this.name = 'QmpCommandError';
  }
}

/** The connection failed, closed, or a reply did not come in time. */
export class QmpConnectionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'QmpConnectionError';
  }
}

interface Pending {
  command: string;
  resolve: (value: JsonValue) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

/** "unix:PATH", "tcp:HOST:PORT", or a plain path to a unix socket. */
export function parseClientAddress(address: string): { path: string } | { host: string; port: number } {
  if (address.startsWith('tcp:')) {
    const rest = address.slice(4);
    const colon = rest.lastIndexOf(':');
    const port = Number(rest.slice(colon + 1));
    if (colon < 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
      throw new QmpConnectionError(`QMP address ${address}: expected tcp:HOST:PORT`);
    }
    return { host: rest.slice(0, colon).replace(/^\[(.*)\]$/, '$1') || '127.0.0.1', port };
  }
  return { path: (address.startsWith('unix:') ? address.slice(5) : address).split(',')[0]! };
}

export class QmpClient extends EventEmitter {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closedError: Error | undefined;
  private greetingWaiter: ((g: QmpGreeting) => void) | undefined;
  /** The server's greeting (version and capabilities). */
  greeting: QmpGreeting | undefined;

  private constructor(private readonly socket: net.Socket, readonly address: string, private readonly timeoutMs: number) {
    super();
    const stream = new JsonMessageStream((result) => {
      if (result.ok) this.onMessage(result.value);
      else this.fail(new QmpConnectionError(`QMP server at ${address} sent invalid JSON: ${result.error}`));
    });
    socket.on('data', (chunk: Buffer) => stream.feed(chunk));
    socket.on('error', (err) => this.fail(new QmpConnectionError(`QMP connection to ${address}: ${err.message}`)));
    socket.on('close', () => {
      this.fail(new QmpConnectionError(`QMP connection to ${address} closed`));
      this.emit('close');
    });
  }

  /** Connects, reads the greeting and negotiates capabilities. */
  static async connect(address: string, options: QmpClientOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    const target = parseClientAddress(address);
    const socket = 'path' in target ? net.connect(target.path) : net.connect(target.port, target.host);
    const client = new QmpClient(socket, address, timeoutMs);
    const greeting = new Promise<QmpGreeting>((resolve) => { client.greetingWaiter = resolve; });
    try {
      await client.bounded(Promise.race([greeting, client.whenClosed()]), 'greeting');
      await client.execute('qmp_capabilities', options.capabilities ? { enable: options.capabilities } : undefined);
    } catch (err) {
      client.close();
      if (err instanceof QmpConnectionError || err instanceof QmpCommandError) throw err;
      throw new QmpConnectionError(`QMP connection to ${address}: ${(err as Error).message}`);
    }
    return client;
  }

  /** Runs a command; resolves with its "return", rejects with QmpCommandError on an error reply. */
  execute<T = JsonValue>(command: string, args?: { [key: string]: JsonValue }, timeoutMs = this.timeoutMs): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpConnectionError(`QMP command ${command} to ${this.address}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: JsonValue) => void, reject, timer });
      const message: { [key: string]: JsonValue } = { execute: command, id };
      if (args !== undefined) message.arguments = args;
      this.socket.write(JSON.stringify(message) + '\n');
    });
  }

  /** Resolves with the next event of that name (bounded by the timeout). */
  waitForEvent(name: string, timeoutMs = this.timeoutMs): Promise<QmpEventMessage> {
    return this.bounded(new Promise<QmpEventMessage>((resolve) => {
      const listener = (event: QmpEventMessage): void => {
        if (event.event === name) { this.off('event', listener); resolve(event); }
      };
      this.on('event', listener);
    }), `event ${name}`, timeoutMs);
  }

  close(): void {
    this.socket.destroy();
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  private whenClosed(): Promise<never> {
    return new Promise((_, reject) => this.once('close', () => reject(this.closedError)));
  }

  private bounded<T>(promise: Promise<T>, what: string, timeoutMs = this.timeoutMs): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new QmpConnectionError(`QMP ${what} from ${this.address}: nothing within ${timeoutMs} ms`)),
        timeoutMs);
      promise.then((v) => { clearTimeout(timer); resolve(v); }, (e: unknown) => { clearTimeout(timer); reject(e); });
    });
  }

  private onMessage(message: JsonValue): void {
    if (typeof message !== 'object' || message === null || Array.isArray(message)) return;
    if ('QMP' in message) {
      this.greeting = message as unknown as QmpGreeting;
      this.greetingWaiter?.(this.greeting);
      return;
    }
    if ('event' in message) {
      const event = message as unknown as QmpEventMessage;
      this.emit('event', event);
      this.emit(event.event, event.data, event.timestamp);
      return;
    }
    const pending = typeof message.id === 'number' ? this.pending.get(message.id) : undefined;
    if (!pending) return; // a reply to a request this client did not make (or timed out)
    this.pending.delete(message.id as number);
    clearTimeout(pending.timer);
    const error = message.error as { class?: string; desc?: string } | undefined;
    if (error) pending.reject(new QmpCommandError(pending.command, error.class ?? 'GenericError', error.desc ?? ''));
    else pending.resolve(message.return ?? null);
  }

  private fail(err: Error): void {
    if (this.closedError) return;
    this.closedError = err;
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(err);
    }
    this.pending.clear();
    this.socket.destroy();
  }
}
