// The static busybox both initramfs images use as their whole userspace toolset.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import type { CpioWriter } from './cpio.js';

const BUSYBOX = '/bin/busybox';

/**
 * Adds /bin/busybox and one /bin symlink per applet (done at build time: saves work at every
 * boot). All applets go to /bin because the lab mounts its own /usr over the initramfs one.
 */
export function addBusybox(cpio: CpioWriter): void {
  if (!existsSync(BUSYBOX)) throw new Error(`${BUSYBOX} not found: install the busybox-static package`);
  const binary = readFileSync(BUSYBOX);
  if (hasInterpreter(binary)) {
    throw new Error(`${BUSYBOX} is dynamically linked: install the busybox-static package`);
  }
  cpio.file('bin/busybox', binary, 0o755);
  const applets = execFileSync(BUSYBOX, ['--list'], { encoding: 'utf8' }).split('\n').map((l) => l.trim());
  for (const applet of applets) {
    if (applet === '' || applet === 'busybox' || applet === 'linuxrc') continue;
    cpio.symlink(`bin/${applet}`, 'busybox');
  }
}

/** True when a 64-bit ELF file asks for a dynamic loader (has a PT_INTERP program header). */
function hasInterpreter(elf: Buffer): boolean {
  if (elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2) throw new Error(`${BUSYBOX} is not a 64-bit ELF file`);
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) if (elf.readUInt32LE(phoff + i * phentsize) === 3) return true;
  return false;
}
