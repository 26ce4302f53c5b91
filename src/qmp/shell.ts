// The command-line side of `tsvirt qmp`: turning words into a command's arguments, and the
// interactive shell (history and tab completion on a terminal; line by line from a pipe).
import readline from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import type { QmpClient } from './client.js';
import { QmpCommandError } from './client.js';
import type { JsonValue } from './json-stream.js';

export class QmpArgumentError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'QmpArgumentError';
  }
}

/** A value given as key=value: JSON when it parses as JSON (5, true, [1], "x"), else the plain text. */
function parseValue(text: string): JsonValue {
  try {
    return JSON.parse(text) as JsonValue;
  } catch {
    return text;
  }
}

/**
 * Builds a command's arguments from words: either one JSON object, or key=value pairs where a
 * dotted key (a.b=1) builds nested objects. No words means no arguments.
 */
export function parseCommandArguments(words: string[]): { [key: string]: JsonValue } | undefined {
  if (words.length === 0) return undefined;
  const first = words[0]!.trimStart();
  if (first.startsWith('{')) {
    const text = words.join(' ');
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      throw new QmpArgumentError(`arguments ${text} are not valid JSON: ${(err as Error).message}`);
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new QmpArgumentError(`arguments ${text} must be a JSON object`);
    }
    return value as { [key: string]: JsonValue };
  }
  const args: { [key: string]: JsonValue } = {};
  for (const word of words) {
    const eq = word.indexOf('=');
    if (eq <= 0) throw new QmpArgumentError(`argument '${word}' is neither key=value nor a JSON object`);
    const path = word.slice(0, eq).split('.');
    let node = args;
    for (const key of path.slice(0, -1)) {
      const next = node[key];
      if (next === undefined) node[key] = {};
      else if (typeof next !== 'object' || next === null || Array.isArray(next)) {
        throw new QmpArgumentError(`argument '${word}': '${key}' already has a value that is not an object`);
      }
      node = node[key] as { [key: string]: JsonValue };
    }
    node[path[path.length - 1]!] = parseValue(word.slice(eq + 1));
  }
  return args;
}

/** Splits a shell line into words, honouring '...' and "..." quoting. */
export function splitWords(line: string): string[] {
  const words: string[] = [];
  let current = '';
  let quote: string | undefined;
  let inWord = false;
  for (const ch of line) {
    if (quote) {
      if (ch === quote) quote = undefined;
      else current += ch;
    } else if (ch === '"' || ch === "'") {
      quote = ch;
      inWord = true;
    } else if (/\s/.test(ch)) {
      if (inWord) words.push(current);
      current = '';
      inWord = false;
    } else {
      current += ch;
      inWord = true;
    }
  }
  if (quote) throw new QmpArgumentError(`unterminated ${quote} quote in: ${line}`);
  if (inWord) words.push(current);
  return words;
}

/** Splits a shell line into a command name and its arguments (a JSON object is kept whole). */
export function parseShellLine(line: string): { command: string; args: { [key: string]: JsonValue } | undefined } | undefined {
  const trimmed = line.trim();
  if (trimmed === '') return undefined;
  const space = trimmed.search(/\s/);
  const command = space < 0 ? trimmed : trimmed.slice(0, space);
  const rest = space < 0 ? '' : trimmed.slice(space + 1).trim();
  const args = rest.startsWith('{') ? parseCommandArguments([rest]) : parseCommandArguments(splitWords(rest));
  return { command, args };
}

/** Completion of the command name (first word) from the server's command list. */
export function completeCommand(names: readonly string[], line: string): [string[], string] {
  if (/\s/.test(line.trimStart())) return [[], line];
  const prefix = line.trimStart();
  const hits = names.filter((n) => n.startsWith(prefix)).sort();
  return [hits, prefix];
}

export interface ShellStreams { input: Readable; output: Writable; errors: Writable; terminal: boolean }

/**
 * Runs commands read from `input` until it ends or the connection closes. Replies and errors
 * go to `output` / `errors` as one JSON document or one line each; events are printed as they
 * arrive. Resolves with the exit status: 0, or 1 if any command failed when not interactive.
 */
export async function runShell(client: QmpClient, streams: ShellStreams): Promise<number> {
  const names = await client.execute<Array<{ name: string }>>('query-commands').then((l) => l.map((c) => c.name));
  const rl = readline.createInterface({
    input: streams.input,
    output: streams.terminal ? streams.output : undefined,
    terminal: streams.terminal,
    historySize: 1000,
    completer: (line: string) => completeCommand(names, line),
  });
  rl.setPrompt('(QMP) ');
  const print = (text: string): void => { streams.output.write(text + '\n'); };
  const onEvent = (event: { event: string }): void => {
    print(`event ${JSON.stringify(event)}`);
    if (streams.terminal) rl.prompt(true);
  };
  client.on('event', onEvent);
  const onClose = (): void => rl.close();
  client.once('close', onClose);
  let failed = false;
  if (streams.terminal) rl.prompt();
  try {
    for await (const line of rl) {
      try {
        const parsed = parseShellLine(line);
        if (parsed) print(JSON.stringify(await client.execute(parsed.command, parsed.args), null, 2));
      } catch (err) {
        failed = true;
        if (err instanceof QmpCommandError) streams.errors.write(`error: ${err.errorClass}: ${err.desc}\n`);
        else streams.errors.write(`error: ${(err as Error).message}\n`);
        if (client.closed) break;
      }
      if (client.closed) break;
      if (streams.terminal) rl.prompt();
    }
  } finally {
    client.off('event', onEvent);
    client.off('close', onClose);
    rl.close();
  }
  return failed && !streams.terminal ? 1 : 0;
}
