// Debian's qemu-img and qemu-io as the oracle for the qcow2 tests.
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';

export const haveQemuImg = spawnSync('qemu-img', ['--version']).status === 0;

export function qemuImg(...args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8', timeout: 120_000, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 256 << 20 });
}

export function qemuIo(file: string, ...commands: string[]): string {
  const args = ['-f', 'qcow2'];
  for (const c of commands) args.push('-c', c);
  args.push(file);
  const out = execFileSync('qemu-io', args, { encoding: 'utf8', timeout: 120_000, stdio: ['ignore', 'pipe', 'pipe'] });
  if (/fail|error|Pattern verification/i.test(out)) throw new Error(`qemu-io on ${file}: ${out}`);
  return out;
}

export interface QemuCheck {
  'check-errors': number;
  corruptions?: number;
  leaks?: number;
  'image-end-offset'?: number;
  'total-clusters'?: number;
  'allocated-clusters'?: number;
  'fragmented-clusters'?: number;
  'compressed-clusters'?: number;
}

export function qemuCheck(file: string): QemuCheck {
  const r = spawnSync('qemu-img', ['check', '--output=json', file], { encoding: 'utf8', timeout: 120_000, maxBuffer: 256 << 20 });
  if (!r.stdout) throw new Error(`qemu-img check ${file}: ${r.stderr}`);
  return JSON.parse(r.stdout) as QemuCheck;
}

/** The image's guest contents as qemu-img sees them. */
export function qemuContents(file: string, rawOut: string, extra: string[] = []): Uint8Array {
  qemuImg('convert', ...extra, '-O', 'raw', file, rawOut);
  const data = new Uint8Array(readFileSync(rawOut));
  rmSync(rawOut, { force: true });
  return data;
}
