// The serial console as a Node stream, and the backends `tsvirt run --console` attaches it
// to: the terminal (raw mode, Ctrl-A x quits as in QEMU), a file, or a unix socket.
import { createWriteStream, rmSync, type WriteStream } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { Duplex } from 'node:stream';

/**
 * Guest output is readable; what is written goes to the guest's UART receiver. The machine
 * feeds it with `deliverOutput` and takes input with `takeInput`.
 */
export class ConsoleStream extends Duplex {
  private pendingInput: Uint8Array[] = [];
  private inputWaiter: (() => void) | null = null;

  constructor() {
    super({ allowHalfOpen: true });
  }

  override _read(): void {
    // Output is pushed as the guest produces it; nothing to pull.
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.pendingInput.push(new Uint8Array(chunk));
    this.inputWaiter?.();
    callback();
  }

  /** Guest output for readers of the stream. */
  deliverOutput(bytes: Uint8Array): void {
    if (bytes.length > 0) this.push(Buffer.from(bytes));
  }

  /** Whether input is waiting for room in the UART. */
  get hasInput(): boolean {
    return this.pendingInput.length > 0;
  }

  /** Hand up to `max` bytes of queued input to `sink`; returns bytes taken. */
  takeInput(sink: (bytes: Uint8Array) => number): number {
    let total = 0;
    while (this.pendingInput.length > 0) {
      const head = this.pendingInput[0]!;
      const n = sink(head);
      total += n;
      if (n < head.length) {
        this.pendingInput[0] = head.subarray(n);
        break;
      }
      this.pendingInput.shift();
    }
    return total;
  }

  /** Called when input arrives (the machine then retries delivery). */
  onInput(waiter: (() => void) | null): void {
    this.inputWaiter = waiter;
  }

  /** The guest is gone: end the readable side. */
  finish(): void {
    this.push(null);
  }
}

export interface ConsoleAttachment {
  detach(): Promise<void>;
}

const CTRL_A = 0x01;

/**
 * Attach to the terminal. With a TTY on stdin the terminal goes to raw mode so the guest
 * gets every key (Ctrl-C included); Ctrl-A x quits, Ctrl-A Ctrl-A sends a literal Ctrl-A.
 */
export function attachStdio(stream: ConsoleStream, quit: () => void): ConsoleAttachment {
  const stdin = process.stdin;
  const raw = stdin.isTTY === true;
  if (raw) stdin.setRawMode(true);
  let escape = false;
  const onData = (chunk: Buffer): void => {
    if (!raw) {
      stream.write(chunk);
      return;
    }
    const out: number[] = [];
    for (const byte of chunk) {
      if (escape) {
        escape = false;
        if (byte === 0x78 /* x */) { quit(); return; }
        if (byte === CTRL_A) out.push(CTRL_A);
        continue;
      }
      if (byte === CTRL_A) { escape = true; continue; }
      out.push(byte);
    }
    if (out.length) stream.write(Buffer.from(out));
  };
  const onOutput = (chunk: Buffer): void => { process.stdout.write(chunk); };
  stdin.on('data', onData);
  stream.on('data', onOutput);
  stdin.resume();
  return {
    async detach() {
      stdin.off('data', onData);
      stream.off('data', onOutput);
      if (raw) stdin.setRawMode(false);
      stdin.pause();
    },
  };
}

/** Append guest output to a file (no input). */
export function attachFile(stream: ConsoleStream, path: string): Promise<ConsoleAttachment> {
  return new Promise((resolve, reject) => {
    const file: WriteStream = createWriteStream(path, { flags: 'a' });
    file.once('error', (err) => reject(new Error(`console file ${path}: ${err.message}`)));
    file.once('open', () => {
      stream.pipe(file);
      resolve({
        detach: () => new Promise((done) => {
          stream.unpipe(file);
          file.end(() => done());
        }),
      });
    });
  });
}

/** Serve the console on a unix socket: each client sees output and may type. */
export function attachSocket(stream: ConsoleStream, path: string): Promise<ConsoleAttachment> {
  return new Promise((resolve, reject) => {
    rmSync(path, { force: true });
    const clients = new Set<Socket>();
    const server: Server = createServer((socket) => {
      clients.add(socket);
      socket.on('data', (d) => stream.write(d));
      socket.on('close', () => clients.delete(socket));
      socket.on('error', () => clients.delete(socket));
    });
    const onOutput = (chunk: Buffer): void => { for (const c of clients) c.write(chunk); };
    stream.on('data', onOutput);
    server.once('error', (err) => reject(new Error(`console socket ${path}: ${err.message}`)));
    server.listen(path, () => resolve({
      detach: () => new Promise((done) => {
        stream.off('data', onOutput);
        for (const c of clients) c.destroy();
        server.close(() => { rmSync(path, { force: true }); done(); });
      }),
    }));
  });
}
