// A byte-level QMP peer for tests: sends exactly the bytes given (garbage included) and
// hands back each message the server sends, with a bound on every wait.
import net from 'node:net';
import { JsonMessageStream, type JsonValue } from '../../../../src/qmp/json-stream.js';

export type Json = { [key: string]: JsonValue };

export class RawQmpConnection {
  private readonly received: Json[] = [];
  private waiter: (() => void) | undefined;
  closed = false;

  private constructor(readonly socket: net.Socket) {
    const stream = new JsonMessageStream((r) => {
      if (!r.ok) throw new Error(`server sent invalid JSON: ${r.error}`);
      this.received.push(r.value as Json);
      this.waiter?.();
    });
    socket.on('data', (chunk: Buffer) => stream.feed(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => { this.closed = true; this.waiter?.(); });
  }

  static open(path: string | { host: string; port: number }): Promise<RawQmpConnection> {
    return new Promise((resolve, reject) => {
      const socket = typeof path === 'string' ? net.connect(path) : net.connect(path.port, path.host);
      socket.once('connect', () => resolve(new RawQmpConnection(socket)));
      socket.once('error', reject);
    });
  }

  /** Opens a connection, reads the greeting and negotiates. */
  static async negotiated(path: string): Promise<RawQmpConnection> {
    const c = await RawQmpConnection.open(path);
    await c.next();
    c.send('{"execute":"qmp_capabilities"}\n');
    const reply = await c.next();
    if (!('return' in reply)) throw new Error(`negotiation failed: ${JSON.stringify(reply)}`);
    return c;
  }

  send(text: string | Buffer): void {
    this.socket.write(text);
  }

  /** The next message from the server; rejects if none comes within `timeoutMs`. */
  async next(timeoutMs = 3000): Promise<Json> {
    const deadline = Date.now() + timeoutMs;
    while (this.received.length === 0) {
      if (this.closed) throw new Error('connection closed while waiting for a message');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no message within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => { clearTimeout(timer); resolve(); };
      });
      this.waiter = undefined;
    }
    return this.received.shift()!;
  }

  /** Sends one command and returns its reply, skipping (and collecting) events. */
  async command(text: string, events: Json[] = [], timeoutMs = 3000): Promise<Json> {
    this.send(text.endsWith('\n') ? text : `${text}\n`);
    for (;;) {
      const m = await this.next(timeoutMs);
      if ('event' in m) events.push(m);
      else return m;
    }
  }

  /** Asserts that nothing arrives for `ms`. */
  async silentFor(ms: number): Promise<boolean> {
    await new Promise((r) => setTimeout(r, ms));
    return this.received.length === 0;
  }

  pending(): Json[] {
    return this.received.splice(0);
  }

  close(): void {
    this.socket.destroy();
  }
}
