// Checks every struct layout, ioctl number and constant in src/kvm/abi.ts against the
// kernel's own <linux/kvm.h>: a C probe generated from the TypeScript layouts is compiled
// with the machine's gcc and prints sizeof/offsetof for each, which must match exactly.
// Needs gcc and the kernel UAPI headers (Debian: gcc, linux-libc-dev); their absence fails.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  ALL_LAYOUTS, IOCTLS, KVM_CAP, KVM_EXIT, KVM_IOEVENTFD_FLAG_DATAMATCH, KVM_IOEVENTFD_FLAG_DEASSIGN,
  KVM_IOEVENTFD_FLAG_PIO, KVM_IRQFD_FLAG_DEASSIGN, KVM_IRQFD_FLAG_RESAMPLE, KVM_IRQ_ROUTING_IRQCHIP,
  KVM_IRQ_ROUTING_MSI, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_SYSTEM_EVENT, KVM_INTERNAL_ERROR,
} from '../../../src/kvm/abi.js';
import { allFields } from '../../../src/kvm/layout.js';

function whichGcc(): string {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    if (existsSync(join(dir, 'gcc'))) return join(dir, 'gcc');
  }
  throw new Error('gcc not found on PATH: install Debian package gcc (needed to check KVM struct layouts)');
}

/** Lines "key value" the TypeScript side expects, and the C statements that print the same keys. */
function expectations(): { expected: Map<string, string>; probe: string[] } {
  const expected = new Map<string, string>();
  const probe: string[] = [];
  const emit = (key: string, cExpr: string, value: number | bigint): void => {
    expected.set(key, String(value));
    probe.push(`  printf("%s %llu\\n", "${key}", (unsigned long long)(${cExpr}));`);
  };
  for (const layout of ALL_LAYOUTS) {
    const t = layout.cType!;
    emit(`${t} sizeof`, `sizeof(${t})`, layout.size);
    for (const f of allFields(layout)) {
      emit(`${t} offsetof ${f.cPath}`, `offsetof(${t}, ${f.cPath})`, f.offset);
      if (!(f.type.kind === 'array' && f.type.length === 0)) {
        emit(`${t} sizeof ${f.cPath}`, `sizeof(((${t} *)0)->${f.cPath})`, f.type.size);
      }
    }
  }
  for (const [name, value] of Object.entries(IOCTLS)) emit(name, name, value);
  for (const [name, value] of Object.entries(KVM_CAP)) emit(`KVM_CAP_${name}`, `KVM_CAP_${name}`, value);
  for (const [name, value] of Object.entries(KVM_EXIT)) emit(`KVM_EXIT_${name}`, `KVM_EXIT_${name}`, value);
  for (const [name, value] of Object.entries(KVM_SYSTEM_EVENT)) {
    emit(`KVM_SYSTEM_EVENT_${name}`, `KVM_SYSTEM_EVENT_${name}`, value);
  }
  for (const [name, value] of Object.entries(KVM_INTERNAL_ERROR)) {
    emit(`KVM_INTERNAL_ERROR_${name}`, `KVM_INTERNAL_ERROR_${name}`, value);
  }
  const flags: Record<string, number> = {
    KVM_IOEVENTFD_FLAG_DATAMATCH, KVM_IOEVENTFD_FLAG_PIO, KVM_IOEVENTFD_FLAG_DEASSIGN,
    KVM_IRQFD_FLAG_DEASSIGN, KVM_IRQFD_FLAG_RESAMPLE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
    KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
  };
  for (const [name, value] of Object.entries(flags)) emit(name, name, value);
  return { expected, probe };
}

test('KVM struct layouts, ioctl numbers and constants match <linux/kvm.h>', () => {
  const gcc = whichGcc();
  const { expected, probe } = expectations();
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-kvm-layout-'));
  try {
    const source = join(dir, 'probe.c');
    const binary = join(dir, 'probe');
    writeFileSync(source, [
      '#include <stdio.h>',
      '#include <stddef.h>',
      '#include <linux/kvm.h>',
      'int main(void) {',
      ...probe,
      '  return 0;',
      '}',
      '',
    ].join('\n'));
    try {
      execFileSync(gcc, ['-o', binary, source], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
    } catch (err) {
      const stderr = String((err as { stderr?: Buffer }).stderr ?? '');
      const missing = /fatal error: (\S+): No such file/.exec(stderr)?.[1];
      if (missing) {
        throw new Error(`header <${missing}> not found: install Debian packages libc6-dev and linux-libc-dev`);
      }
      throw new Error(`compiling the KVM layout probe failed:\n${stderr.split('\n').slice(0, 20).join('\n')}`);
    }
    const output = execFileSync(binary, { encoding: 'utf8', timeout: 10_000 });
    const actual = new Map<string, string>();
    for (const line of output.trim().split('\n')) {
      const at = line.lastIndexOf(' ');
      actual.set(line.slice(0, at), line.slice(at + 1));
    }
    const mismatches: string[] = [];
    for (const [key, value] of expected) {
      if (actual.get(key) !== value) mismatches.push(`${key}: TypeScript ${value}, kernel header ${actual.get(key)}`);
    }
    assert.deepEqual(mismatches, []);
    assert.equal(actual.size, expected.size);
    // The probe must have checked something substantial.
    assert.ok(expected.size > 300, `only ${expected.size} checks generated`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
