// Calls a function on the main thread each time an eventfd is signalled (a KVM ioeventfd
// doorbell, for instance).
//
// Preferred: the main thread's own event loop watches the eventfd. Node has no public API
// for an arbitrary fd (net.Socket refuses an eventfd: libuv cannot tell what it is), but
// its pipe handle opens any pollable descriptor. An eventfd read as a stream yields its
// 8-byte counter, and libuv's read resets it, so each 'data' event is one burst of signals.
// The handle owns a duplicate of the fd: closing the stream closes the duplicate, never the
// caller's descriptor. This saves the fd poller's thread hop on every doorbell
// (docs/design.md, "virtio-blk request path").
//
// Fallback: when the pipe binding is missing (a Node.js without process.binding), or when
// TSVIRT_EVENTFD_THREAD=1 asks for it, the fd poller's epoll thread reports readiness and
// the eventfd is drained here.
import { Socket, type SocketConstructorOpts } from 'node:net';
import { FdPoller } from './fd-poller.js';
import { close, dup, readNonBlocking } from './libc.js';

export interface EventfdWatcher {
  /** Calls `onSignal` after each burst of writes to the eventfd `fd` (which it drains). */
  watch(fd: number, onSignal: () => void): void;
  /** Stops watching `fd`; the caller still owns and closes it. Unknown fds are ignored. */
  unwatch(fd: number): void;
  /** Stops watching everything and releases the watcher's resources. */
  close(): Promise<void>;
  /** Which mechanism serves the watches: 'loop' (the event loop) or 'thread' (the fd poller). */
  readonly kind: 'loop' | 'thread';
}

interface PipeHandle { open(fd: number): number }
interface PipeBinding { Pipe: new (type: number) => PipeHandle; constants: { SOCKET: number } }

function pipeBinding(): PipeBinding | undefined {
  try {
    const binding = (process as unknown as { binding(name: string): unknown }).binding('pipe_wrap') as Partial<PipeBinding>;
    return typeof binding.Pipe === 'function' && binding.constants ? binding as PipeBinding : undefined;
  } catch {
    return undefined;
  }
}

class LoopEventfdWatcher implements EventfdWatcher {
  readonly kind = 'loop';
  private readonly streams = new Map<number, Socket>();

  constructor(private readonly binding: PipeBinding) {}

  watch(fd: number, onSignal: () => void): void {
    if (this.streams.has(fd)) throw new Error(`eventfd watcher: fd ${fd} is already watched`);
    const own = dup(fd);
    const handle = new this.binding.Pipe(this.binding.constants.SOCKET);
    const status = handle.open(own);
    if (status !== 0) {
      // The handle never took the duplicate, so it is still ours to close.
      close(own);
      throw new Error(`eventfd watcher: cannot watch fd ${fd} on the event loop (libuv error ${status})`);
    }
    const stream = new Socket({ handle, readable: true, writable: false } as SocketConstructorOpts);
    stream.on('data', () => onSignal());
    stream.on('error', (err) => {
      // An eventfd read does not fail; if it ever does, stop watching rather than spin.
      process.emitWarning(`eventfd watcher: fd ${fd}: ${err.message}`);
      this.unwatch(fd);
    });
    // Like the fd poller's thread: watching alone must not keep the process alive.
    stream.unref();
    this.streams.set(fd, stream);
  }

  unwatch(fd: number): void {
    const stream = this.streams.get(fd);
    if (!stream) return;
    this.streams.delete(fd);
    stream.removeAllListeners('data');
    stream.destroy();
  }

  close(): Promise<void> {
    for (const fd of [...this.streams.keys()]) this.unwatch(fd);
    return Promise.resolve();
  }
}

class ThreadEventfdWatcher implements EventfdWatcher {
  readonly kind = 'thread';
  private readonly poller = new FdPoller();
  private readonly counter = new Uint8Array(8);

  watch(fd: number, onSignal: () => void): void {
    this.poller.add(fd, () => {
      if (readNonBlocking(fd, this.counter) > 0) onSignal();
    });
  }

  unwatch(fd: number): void {
    this.poller.remove(fd);
  }

  close(): Promise<void> {
    return this.poller.close();
  }
}

/** The event-loop watcher where Node offers it, else the fd poller thread (see the top). */
export function createEventfdWatcher(options: { thread?: boolean } = {}): EventfdWatcher {
  const binding = options.thread || process.env.TSVIRT_EVENTFD_THREAD === '1' ? undefined : pipeBinding();
  return binding ? new LoopEventfdWatcher(binding) : new ThreadEventfdWatcher();
}
