// One client's QMP conversation: greeting, capability negotiation, then commands in order.
// The session knows nothing about sockets: it is fed bytes and given a function to send
// messages, so the same code serves unix and tcp listeners, client-mode connections and tests.
import { JsonMessageStream, type JsonStreamResult, type JsonValue } from './json-stream.js';
import {
  QEMU_COMPAT_VERSION, QMP_PACKAGE, QmpError, qmpTimestamp, type QmpEventMessage, type QmpGreeting,
} from './protocol.js';
import type { CommandContext, QmpArgs, QmpRegistry } from './registry.js';
import { validateArguments } from './schema.js';
import type { QmpTarget } from './target.js';

export interface SessionHost {
  readonly target: QmpTarget;
  readonly registry: QmpRegistry;
  emitEvent(name: string, data?: { [key: string]: JsonValue }): void;
  /** Called once the reply of a command that asked for it (quit) has been sent. */
  shutdownRequested(): void;
  /** Flow control: stop reading the peer while this many commands wait (QEMU stops at 8). */
  setReading?(on: boolean): void;
}

/** Requests a session queues before it asks its host to stop reading input. */
export const MAX_PENDING_COMMANDS = 8;

type JsonObject = { [key: string]: JsonValue };

const isObject = (v: JsonValue): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v);

export class QmpSession {
  private negotiated = false;
  private oobEnabled = false;
  private closed = false;
  private shutdownAfterReply = false;
  private pending = 0;
  /** Commands run one at a time, in arrival order, like QEMU's in-band queue. */
  private queue: Promise<void> = Promise.resolve();
  private readonly parser = new JsonMessageStream((result) => this.onMessage(result));

  constructor(private readonly host: SessionHost, private readonly send: (message: JsonValue) => void) {}

  static greeting(): QmpGreeting {
    return { QMP: { version: { qemu: { ...QEMU_COMPAT_VERSION }, package: QMP_PACKAGE }, capabilities: ['oob'] } };
  }

  /** Sends the greeting; call once when the connection opens. */
  start(): void {
    this.write(QmpSession.greeting() as unknown as JsonValue);
  }

  feed(bytes: Uint8Array): void {
    if (!this.closed) this.parser.feed(bytes);
  }

  /** Resolves once every command received so far has been answered. */
  idle(): Promise<void> {
    return this.queue;
  }

  /** Stops all output (the peer has gone); commands already running finish on their own. */
  close(): void {
    this.closed = true;
  }

  get isNegotiated(): boolean {
    return this.negotiated;
  }

  /** Events reach only clients that finished negotiation, as in QEMU. */
  sendEvent(event: QmpEventMessage): void {
    if (this.negotiated) this.write(event as unknown as JsonValue);
  }

  private write(message: JsonValue): void {
    if (!this.closed) this.send(message);
  }

  private reply(id: JsonValue | undefined, body: JsonObject): void {
    this.write(id === undefined ? body : { ...body, id });
  }

  private replyError(id: JsonValue | undefined, error: QmpError): void {
    this.reply(id, { error: { class: error.errorClass, desc: error.desc } });
  }

  private onMessage(result: JsonStreamResult): void {
    if (!result.ok) {
      this.enqueue(() => this.replyError(undefined, new QmpError('GenericError', result.error)));
      return;
    }
    const message = result.value;
    if (!isObject(message)) {
      this.enqueue(() => this.replyError(undefined, new QmpError('GenericError', 'QMP input must be a JSON object')));
      return;
    }
    const id = Object.hasOwn(message, 'id') ? message.id : undefined;
    this.enqueue(async () => {
      try {
        this.reply(id, { return: await this.dispatch(message) });
      } catch (err) {
        this.replyError(id, err instanceof QmpError ? err : new QmpError('GenericError', describe(err)));
      }
      if (this.shutdownAfterReply) this.host.shutdownRequested();
    });
  }

  private enqueue(step: () => void | Promise<void>): void {
    this.pending++;
    if (this.pending === MAX_PENDING_COMMANDS) this.host.setReading?.(false);
    this.queue = this.queue
      // Once the session is closed (connection reset, server closing), requests that have not
      // started are dropped. A peer that only half-closes still has its requests run and
      // answered, as QEMU does.
      .then(() => (this.closed ? undefined : step()))
      .catch(() => undefined)
      .finally(() => {
        this.pending--;
        if (this.pending === MAX_PENDING_COMMANDS - 1) this.host.setReading?.(true);
      });
  }

  private async dispatch(message: JsonObject): Promise<JsonValue> {
    const { name, args, oob } = this.checkEnvelope(message);
    if (!this.negotiated && name !== 'qmp_capabilities') {
      throw new QmpError('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'");
    }
    const command = this.host.registry.command(name);
    if (!command) throw new QmpError('CommandNotFound', `The command ${name} has not been found`);
    if (oob && !command.allowOob) throw new QmpError('GenericError', `The command ${name} does not support OOB`);
    validateArguments(command.args, args);
    if (name === 'qmp_capabilities' && !this.negotiated) {
      const enable = (args.enable ?? []) as string[];
      this.oobEnabled = enable.includes('oob');
      this.negotiated = true;
      return {};
    }
    const context: CommandContext = {
      target: this.host.target,
      registry: this.host.registry,
      emitEvent: (event, data) => this.host.emitEvent(event, data),
      closeAfterReply: () => { this.shutdownAfterReply = true; },
    };
    return await command.handler(args, context);
  }

  /** Checks the request's members the way QEMU does, with QEMU's error texts. */
  private checkEnvelope(message: JsonObject): { name: string; args: QmpArgs; oob: boolean } {
    for (const [key, value] of Object.entries(message)) {
      if (key === 'execute' || (key === 'exec-oob' && this.oobEnabled)) {
        if (typeof value !== 'string') throw new QmpError('GenericError', `QMP input member '${key}' must be a string`);
      } else if (key === 'arguments') {
        if (!isObject(value)) throw new QmpError('GenericError', "QMP input member 'arguments' must be an object");
      } else if (key !== 'id') {
        throw new QmpError('GenericError', `QMP input member '${key}' is unexpected`);
      }
    }
    const execute = message.execute as string | undefined;
    const execOob = message['exec-oob'] as string | undefined;
    if (execute !== undefined && execOob !== undefined) {
      throw new QmpError('GenericError', "QMP input must not have both 'execute' and 'exec-oob'");
    }
    const name = execute ?? execOob;
    if (name === undefined) throw new QmpError('GenericError', "QMP input lacks member 'execute'");
    return { name, args: (message.arguments ?? {}) as QmpArgs, oob: execOob !== undefined };
  }
}

export function makeEvent(event: string, data?: { [key: string]: JsonValue }): QmpEventMessage {
  return data === undefined ? { event, timestamp: qmpTimestamp() } : { event, data, timestamp: qmpTimestamp() };
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
