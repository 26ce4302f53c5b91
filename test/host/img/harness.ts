// Running `tsvirt img` and the real qemu-img side by side on scratch images.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../../src/cli/tsvirt.cjs', import.meta.url));

export interface RunResult { status: number; stdout: string; stderr: string }

function run(command: string, args: string[], cwd: string, env?: Record<string, string>): RunResult {
  const r = spawnSync(command, args, { cwd, encoding: 'utf8', timeout: 60_000, env: env && { ...process.env, ...env } });
  if (r.error) throw r.error;
  return { status: r.status ?? 128, stdout: r.stdout, stderr: r.stderr };
}

export function haveQemuImg(): boolean {
  const r = spawnSync('qemu-img', ['--version'], { encoding: 'utf8', timeout: 10_000 });
  return r.status === 0;
}

/** A scratch directory; commands run inside it so file names in output stay short and equal. */
export class Scratch {
  readonly dir = mkdtempSync(join(tmpdir(), 'tsvirt-img-'));
  path(name: string): string {
    return join(this.dir, name);
  }
  tsvirt(...args: string[]): RunResult {
    return run(process.execPath, [CLI, 'img', ...args], this.dir);
  }
  /** tsvirt img with extra environment variables. */
  tsvirtEnv(env: Record<string, string>, ...args: string[]): RunResult {
    return run(process.execPath, [CLI, 'img', ...args], this.dir, env);
  }
  qemuImg(...args: string[]): RunResult {
    return run('qemu-img', args, this.dir);
  }
  qemuIo(...args: string[]): RunResult {
    return run('qemu-io', args, this.dir);
  }
  /** Runs qemu-img and fails loudly if it does (fixtures must be built correctly). */
  qemu(...args: string[]): string {
    const r = this.qemuImg(...args);
    if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')} failed: ${r.stderr}`);
    return r.stdout;
  }
  io(file: string, ...commands: string[]): void {
    const r = this.qemuIo(...commands.flatMap((c) => ['-c', c]), file);
    if (r.status !== 0 || /error|failed/i.test(r.stdout + r.stderr)) throw new Error(`qemu-io ${commands.join('; ')}: ${r.stdout}${r.stderr}`);
  }
  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** `info --output json` minus what legitimately differs between two files with the same content. */
export function comparableInfo(json: string): unknown {
  const strip = (o: Record<string, unknown>): Record<string, unknown> => {
    const { 'actual-size': _a, filename: _f, ...rest } = o;
    return rest;
  };
  const parsed = JSON.parse(json) as Record<string, unknown> | Array<Record<string, unknown>>;
  return Array.isArray(parsed) ? parsed.map(strip) : strip(parsed);
}
