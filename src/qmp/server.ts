// The QMP server: listeners (unix and loopback tcp, several at once), one QmpSession per
// connection, and the bridge from the VM's events to every negotiated client. A client that
// misbehaves or vanishes only ever loses its own connection.
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { parseQmpEndpoint, type QmpEndpoint } from './address.js';
import { createCoreRegistry } from './commands.js';
import type { JsonValue } from './json-stream.js';
import type { QmpRegistry } from './registry.js';
import { makeEvent, QmpSession } from './session.js';
import type { QmpTarget } from './target.js';

/** A client that stops reading loses its connection once this much output is queued for it. */
const MAX_QUEUED_OUTPUT = 16 * 1024 * 1024;
/** How long close() lets in-flight commands finish, and sockets flush, before cutting them off. */
const CLOSE_GRACE_MS = 1000;

export interface QmpListenerInfo { spec: string; endpoint: QmpEndpoint; address: string }

export class QmpServer {
  private readonly sessions = new Set<QmpSession>();
  private readonly sockets = new Set<net.Socket>();
  private readonly servers: Array<{ server: net.Server; endpoint: QmpEndpoint }> = [];
  private readonly unsubscribe: Array<() => void> = [];
  private readonly listenerInfo: QmpListenerInfo[] = [];
  private closing: Promise<void> | undefined;
  readonly registry: QmpRegistry;

  constructor(readonly target: QmpTarget, registry?: QmpRegistry) {
    this.registry = registry ?? createCoreRegistry();
    const stop = (): void => this.emitEvent('STOP');
    const resume = (): void => this.emitEvent('RESUME');
    const powerdown = (): void => this.emitEvent('POWERDOWN');
    const reset = (info: { guest: boolean; reason: string }): void =>
      this.emitEvent('RESET', { guest: info.guest, reason: info.reason });
    const shutdown = (info: { guest: boolean; reason: string }): void =>
      this.emitEvent('SHUTDOWN', { guest: info.guest, reason: info.reason });
    target.on('stop', stop);
    target.on('resume', resume);
    target.on('powerdown', powerdown);
    target.on('reset', reset);
    target.on('shutdown', shutdown);
    this.unsubscribe.push(
      () => target.off('stop', stop), () => target.off('resume', resume), () => target.off('powerdown', powerdown),
      () => target.off('reset', reset), () => target.off('shutdown', shutdown),
    );
  }

  /** The listeners, with their actual addresses (a tcp port 0 is resolved). */
  get listeners(): readonly QmpListenerInfo[] {
    return this.listenerInfo;
  }

  get clientCount(): number {
    return this.sessions.size;
  }

  /** Sends an event to every negotiated client. The event must be registered. */
  emitEvent(name: string, data?: { [key: string]: JsonValue }): void {
    if (!this.registry.hasEvent(name)) throw new Error(`QMP event ${name} is not registered`);
    const message = makeEvent(name, data);
    for (const session of this.sessions) session.sendEvent(message);
  }

  /**
   * Opens one endpoint. Resolves once it listens, or, for a wait=on server, once its first
   * client has connected (QEMU holds VM start the same way); for server=off, once connected.
   */
  async listen(spec: string): Promise<QmpListenerInfo> {
    const endpoint = parseQmpEndpoint(spec);
    if (!endpoint.server) return this.connectOut(spec, endpoint);
    const server = net.createServer({ allowHalfOpen: true }, (socket) => this.attach(socket));
    server.on('error', () => undefined);
    if (endpoint.kind === 'unix') removeStaleSocket(endpoint.path);
    await new Promise<void>((resolve, reject) => {
      const fail = (err: Error): void => reject(new Error(`QMP listener ${spec}: ${err.message}`));
      server.once('error', fail);
      const ready = (): void => { server.off('error', fail); resolve(); };
      if (endpoint.kind === 'unix') server.listen(endpoint.path, ready);
      else server.listen(endpoint.port, endpoint.host, ready);
    });
    this.servers.push({ server, endpoint });
    const bound = server.address();
    const address = endpoint.kind === 'unix' ? `unix:${endpoint.path}`
      : `tcp:${endpoint.host}:${typeof bound === 'object' && bound ? bound.port : endpoint.port}`;
    const info = { spec, endpoint, address };
    this.listenerInfo.push(info);
    if (endpoint.wait) await new Promise<void>((resolve) => server.once('connection', () => resolve()));
    return info;
  }

  /** Serves one already-connected stream (used for server=off, and usable by embedders). */
  attach(socket: net.Socket): void {
    if (this.closing) { socket.destroy(); return; }
    this.sockets.add(socket);
    const session = new QmpSession({
      target: this.target,
      registry: this.registry,
      emitEvent: (name, data) => this.emitEvent(name, data),
      shutdownRequested: () => void this.close(),
      setReading: (on) => { if (on) socket.resume(); else socket.pause(); },
    }, (message) => {
      if (socket.destroyed) return;
      if (socket.writableLength > MAX_QUEUED_OUTPUT) { socket.destroy(); return; }
      socket.write(JSON.stringify(message) + '\r\n');
    });
    this.sessions.add(session);
    const drop = (): void => {
      session.close();
      this.sessions.delete(session);
      this.sockets.delete(socket);
    };
    socket.on('data', (chunk: Buffer) => session.feed(chunk));
    socket.on('error', drop);
    socket.on('close', drop);
    // A peer that half-closes (e.g. `printf ... | socat`) still gets the replies to what it sent.
    socket.on('end', () => void session.idle().then(() => socket.end()));
    session.start();
  }

  private async connectOut(spec: string, endpoint: QmpEndpoint): Promise<QmpListenerInfo> {
    const socket = endpoint.kind === 'unix'
      ? net.connect({ path: endpoint.path, allowHalfOpen: true })
      : net.connect({ port: endpoint.port, host: endpoint.host, allowHalfOpen: true });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', (err) => reject(new Error(`QMP client connection ${spec}: ${err.message}`)));
    });
    this.attach(socket);
    const address = endpoint.kind === 'unix' ? `unix:${endpoint.path}` : `tcp:${endpoint.host}:${endpoint.port}`;
    const info = { spec, endpoint, address };
    this.listenerInfo.push(info);
    return info;
  }

  /**
   * Closes every connection and listener (unix socket files are removed). Commands already
   * received are answered first (bounded), so a client that sent quit still gets its reply
   * even when the VM's exit is what closes the server. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const off of this.unsubscribe) off();
      const closed = this.servers.map(({ server }) => new Promise<void>((resolve) => server.close(() => resolve())));
      for (const { endpoint } of this.servers) if (endpoint.kind === 'unix') removeStaleSocket(endpoint.path);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all([...this.sessions].map((s) => s.idle())),
        new Promise((resolve) => { timer = setTimeout(resolve, CLOSE_GRACE_MS); }),
      ]);
      clearTimeout(timer);
      for (const session of this.sessions) session.close();
      this.sessions.clear();
      // end() rather than destroy() so queued output is flushed; destroy whatever lingers.
      for (const socket of this.sockets) {
        socket.end();
        setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref();
      }
      await Promise.all(closed);
    })();
    return this.closing;
  }
}

function removeStaleSocket(path: string): void {
  // Only ever remove a socket file, never a regular file someone pointed us at by mistake.
  if (existsSync(path) && lstatSync(path).isSocket()) unlinkSync(path);
}

/**
 * Starts a QMP server for `target` with one endpoint per spec (the `--qmp` options of
 * `tsvirt run`). On failure, endpoints already opened are closed again.
 */
export async function startQmpServers(target: QmpTarget, specs: string[], registry?: QmpRegistry): Promise<QmpServer> {
  const server = new QmpServer(target, registry);
  try {
    for (const spec of specs) parseQmpEndpoint(spec); // reject a bad spec before opening anything
    for (const spec of specs) await server.listen(spec);
  } catch (err) {
    await server.close();
    throw err;
  }
  return server;
}
