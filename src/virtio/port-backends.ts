// Host ends for virtio-console ports: a unix socket server (one client at a time; connect
// and disconnect become PORT_OPEN 1/0 in the guest) and a plain stream pair (the console).
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import type { PortBackend, PortEndpoint } from './console.js';

export class UnixSocketPortBackend implements PortBackend {
  private server: Server | undefined;
  private client: Socket | undefined;
  private port: PortEndpoint | undefined;
  private paused = false;

  constructor(readonly path: string) {}

  async start(port: PortEndpoint): Promise<void> {
    this.port = port;
    if (existsSync(this.path)) {
      // A socket left by an earlier run is replaced; anything else is the user's file.
      if (!lstatSync(this.path).isSocket()) throw new Error(`channel ${port.name}: ${this.path} exists and is not a socket`);
      unlinkSync(this.path);
    }
    const server = createServer((socket) => this.accept(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e) => reject(new Error(`channel ${port.name}: cannot listen on ${this.path}: ${e.message}`)));
      server.listen(this.path, () => resolve());
    });
    server.unref();
  }

  private accept(socket: Socket): void {
    if (this.client) {
      socket.destroy();
      return;
    }
    this.client = socket;
    if (this.paused) socket.pause();
    socket.on('data', (d: Buffer) => this.port?.fromHost(new Uint8Array(d.buffer, d.byteOffset, d.length)));
    socket.on('drain', () => this.port?.hostDrained());
    socket.on('error', () => {});
    socket.on('close', () => {
      if (this.client !== socket) return;
      this.client = undefined;
      this.port?.hostConnected(false);
    });
    this.port?.hostConnected(true);
  }

  write(data: Uint8Array): boolean {
    return this.client ? this.client.write(data) : true;
  }

  pauseInput(): void {
    this.paused = true;
    this.client?.pause();
  }

  resumeInput(): void {
    this.paused = false;
    this.client?.resume();
  }

  async close(): Promise<void> {
    this.client?.destroy();
    this.client = undefined;
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((r) => server.close(() => r()));
    try {
      unlinkSync(this.path);
    } catch {}
  }
}

/** A port wired to streams (for the guest console: stdin/stdout or a log file). Always connected. */
export class StreamPortBackend implements PortBackend {
  private port: PortEndpoint | undefined;

  constructor(private readonly output: Writable, private readonly input?: Readable) {}

  async start(port: PortEndpoint): Promise<void> {
    this.port = port;
    port.hostConnected(true);
    this.output.on('drain', () => this.port?.hostDrained());
    this.input?.on('data', (d: Buffer | string) => {
      const bytes = typeof d === 'string' ? new TextEncoder().encode(d) : new Uint8Array(d.buffer, d.byteOffset, d.length);
      this.port?.fromHost(bytes);
    });
  }

  write(data: Uint8Array): boolean {
    return this.output.write(data);
  }

  pauseInput(): void { this.input?.pause(); }
  resumeInput(): void { this.input?.resume(); }
  async close(): Promise<void> {}
}
