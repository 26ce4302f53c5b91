// Host QEMU for the QMP comparison tests and benchmark: a VM with only a monitor, started with
// the kernel the lab uses (the guest need not get anywhere: the monitor answers at once).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fetchKernel } from '../../../../src/lab/kernel-package.js';
import { labCacheDir, labFiles } from '../../../../src/lab/paths.js';

export const QEMU = 'qemu-system-x86_64';

/** Why QEMU-based tests cannot run here, or null when they can. */
export function qemuUnavailable(): string | null {
  if (!existsSync('/dev/kvm')) return '/dev/kvm is missing';
  const probe = spawnSync(QEMU, ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) return `${QEMU} is not installed (Debian package qemu-system-x86)`;
  return null;
}

/**
 * A bzImage to hand to -kernel: the lab build's kernel when there is one, else the same
 * Debian cloud kernel package fetched into the lab cache (shared with `tsvirt lab build`).
 */
export function testKernel(): string {
  const built = labFiles.kernel();
  if (existsSync(built)) return built;
  return fetchKernel(join(labCacheDir(), 'kernel'), () => undefined).vmlinuz;
}

export interface QemuVm { process: ChildProcess; socket: string; stop(): Promise<void> }

/** Starts QEMU with a QMP unix socket and waits (bounded) until the socket exists. */
export async function startQemu(kernel: string, socket: string, extra: string[] = []): Promise<QemuVm> {
  const child = spawn(QEMU, [
    '-enable-kvm', '-m', '256', '-display', 'none', '-nodefaults', '-kernel', kernel,
    '-qmp', `unix:${socket},server=on,wait=off`, ...extra,
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => { stderr += d; });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  };
  for (let i = 0; i < 200 && !existsSync(socket); i++) {
    if (child.exitCode !== null) throw new Error(`${QEMU} exited with ${child.exitCode}: ${stderr.trim()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!existsSync(socket)) {
    await stop();
    throw new Error(`${QEMU} did not create its QMP socket ${socket} within 10 s: ${stderr.trim()}`);
  }
  return { process: child, socket, stop };
}
