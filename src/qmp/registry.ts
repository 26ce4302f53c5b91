// The command and event registry: what a QMP server can execute and emit. The core commands
// register themselves here (./commands.js); later features (hot plug, migration, block jobs,
// memory) add theirs with `register` / `registerEvent`, and query-commands / query-events
// report whatever is registered.
import type { JsonValue } from './json-stream.js';
import type { ArgSchema } from './schema.js';
import type { QmpTarget } from './target.js';

export type QmpArgs = { [key: string]: JsonValue };

/** What a handler can reach: the VM, its registry, and the server that runs it (for events). */
export interface CommandContext {
  readonly target: QmpTarget;
  readonly registry: QmpRegistry;
  /** Sends an event to every negotiated client of the server. */
  emitEvent(name: string, data?: { [key: string]: JsonValue }): void;
  /** Asks the server to close every connection and listener once this command's reply is sent. */
  closeAfterReply(): void;
}

export interface QmpCommand {
  name: string;
  /** Arguments the command accepts; validated before the handler runs. */
  args: ArgSchema;
  /** Whether "exec-oob" may run it (none of the core commands may, as in QEMU). */
  allowOob?: boolean;
  handler(args: QmpArgs, context: CommandContext): JsonValue | Promise<JsonValue>;
}

export class QmpRegistry {
  private readonly commands = new Map<string, QmpCommand>();
  private readonly events = new Set<string>();

  register(command: QmpCommand): this {
    if (this.commands.has(command.name)) throw new Error(`QMP command ${command.name} is registered twice`);
    this.commands.set(command.name, command);
    return this;
  }

  registerEvent(name: string): this {
    this.events.add(name);
    return this;
  }

  command(name: string): QmpCommand | undefined {
    return this.commands.get(name);
  }

  hasEvent(name: string): boolean {
    return this.events.has(name);
  }

  commandNames(): string[] {
    return [...this.commands.keys()];
  }

  eventNames(): string[] {
    return [...this.events];
  }
}
