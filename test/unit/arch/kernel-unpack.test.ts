// The VMM's own unpacking of a bzImage's kernel: the LZ4 legacy decoder against Debian's lz4
// tool, the payload unpacker, the KASLR relocation stub (disassembled with objdump), and the
// loader placing a real Debian kernel with and without KASLR.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { Lz4Error, lz4LegacyDecode } from '../../../src/arch/x86/lz4.js';
import { bzImagePayload, KernelPayloadError, payloadCompression, unpackPayload } from '../../../src/arch/x86/kernel-payload.js';
import { KERNEL_IMAGE_SIZE, randomSlot, relocationStub, virtualSlots } from '../../../src/arch/x86/kaslr.js';
import { loadLinux } from '../../../src/arch/x86/linux-loader.js';
import { RegionGuestMemory } from '../../../src/memory/region-memory.js';
import { ZERO_PAGE_START } from '../../../src/arch/x86/layout.js';
import { debianKernelOrSkip } from './debian-kernel.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvirt-unpack-'));

/** `data` compressed by Debian's lz4 tool in the legacy format, as the kernel's build does. */
function lz4Legacy(data: Uint8Array): Uint8Array {
  const input = join(dir, 'in.bin');
  writeFileSync(input, data);
  execFileSync('lz4', ['-l', '-9', '-f', '-q', input, join(dir, 'in.lz4')]);
  return new Uint8Array(readFileSync(join(dir, 'in.lz4')));
}

/** A kernel-style payload: the lz4 stream with the unpacked length appended. */
function kernelPayload(data: Uint8Array): Uint8Array {
  const stream = lz4Legacy(data);
  const out = new Uint8Array(stream.length + 4);
  out.set(stream);
  new DataView(out.buffer).setUint32(stream.length, data.length, true);
  return out;
}

function sampleData(size: number): Uint8Array {
  const data = new Uint8Array(size);
  let seed = 7;
  for (let i = 0; i < size; i++) {
    // Runs, repeats at short distances (overlapping matches) and noise.
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    data[i] = i % 4096 < 1024 ? 0 : i % 4096 < 2048 ? i % 3 : seed >>> 24;
  }
  return data;
}

test('LZ4: streams made by Debian\'s lz4 tool decode to their input, over several 8 MiB blocks', () => {
  const data = sampleData(20 << 20);
  const out = new Uint8Array(data.length);
  assert.equal(lz4LegacyDecode(lz4Legacy(data), out), data.length);
  assert.ok(Buffer.from(out).equals(Buffer.from(data)));
  assert.ok(Buffer.from(unpackPayload(kernelPayload(data))).equals(Buffer.from(data)));
});

test('LZ4: short streams decode exactly, into outputs of exactly their size (the eight-byte copies near both ends)', () => {
  // Sizes around the copies' widths, contents from incompressible to runs with short and long
  // repeat distances: every literal and match shape meets the end of its buffers somewhere.
  const shapes: ((i: number, seed: number) => number)[] = [
    (_i, seed) => seed >>> 24,
    (i) => i % 5,
    (i, seed) => (i % 64 < 40 ? i % 11 : seed >>> 24),
    (i) => (i % 300 < 200 ? 0 : i & 0xff),
  ];
  for (const size of [1, 5, 8, 12, 15, 16, 17, 24, 31, 32, 33, 40, 47, 64, 100, 257, 1000, 4099, 70_001]) {
    shapes.forEach((shape, which) => {
      const data = new Uint8Array(size);
      let seed = size * 31 + which;
      for (let i = 0; i < size; i++) {
        seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
        data[i] = shape(i, seed);
      }
      const out = new Uint8Array(size);
      assert.equal(lz4LegacyDecode(lz4Legacy(data), out), size, `size ${size}, shape ${which}`);
      assert.ok(Buffer.from(out).equals(Buffer.from(data)), `size ${size}, shape ${which}`);
    });
  }
});

test('LZ4: damaged streams fail with one line saying where, never writing past the output', () => {
  const data = sampleData(1 << 20);
  const good = lz4Legacy(data);
  assert.throws(() => lz4LegacyDecode(Uint8Array.of(1, 2, 3, 4, 5), new Uint8Array(10)), /not an LZ4 legacy stream/);
  // Too small an output: the decoder stops at its end.
  assert.throws(() => lz4LegacyDecode(good, new Uint8Array(1000)), (e: Error) => e instanceof Lz4Error && /more than the 1000 bytes/.test(e.message));
  // A block whose first sequence copies a match from before the block's output.
  const hostile = Uint8Array.of(0x02, 0x21, 0x4c, 0x18, 4, 0, 0, 0, 0x10, 0x41, 0x09, 0x00);
  assert.throws(() => lz4LegacyDecode(hostile, new Uint8Array(64)), /match offset 9 points before the block's output/);
  // Literals that run past the block.
  const overrun = Uint8Array.of(0x02, 0x21, 0x4c, 0x18, 2, 0, 0, 0, 0x50, 0x41);
  assert.throws(() => lz4LegacyDecode(overrun, new Uint8Array(64)), /literals run past the block's end/);
  // A truncated payload decodes short: the trailer's length gives it away.
  const truncated = kernelPayload(data);
  const cut = new Uint8Array(truncated.length - 5000);
  cut.set(truncated.subarray(0, cut.length - 4));
  new DataView(cut.buffer).setUint32(cut.length - 4, data.length, true);
  assert.throws(() => unpackPayload(cut), (e: Error) => e instanceof KernelPayloadError && /unpacked to \d+ bytes, its trailer says/.test(e.message));
});

test('payloads: the compression is told by its magic; gzip unpacks, xz is left to the guest', () => {
  const data = sampleData(300_000);
  assert.equal(payloadCompression(lz4Legacy(data)), 'lz4');
  const gz = gzipSync(data);
  assert.equal(payloadCompression(gz), 'gzip');
  assert.ok(Buffer.from(unpackPayload(gz)).equals(Buffer.from(data)));
  const xz = Uint8Array.of(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 1, 2);
  assert.equal(payloadCompression(xz), 'xz');
  assert.throws(() => unpackPayload(xz), /xz-compressed: only lz4 and gzip are unpacked here/);
  assert.throws(() => unpackPayload(gz.subarray(0, 1000)), /gzip payload does not decode/);
});

test('KASLR: the slots span the kernel mapping; the stub disassembles to the relocation loops', () => {
  // 16 MiB link address, 34 MiB image, 2 MiB steps: (1 GiB - 50 MiB) / 2 MiB + 1.
  assert.equal(virtualSlots(16n << 20n, 34n << 20n, 2n << 20n), 488);
  assert.equal(virtualSlots(16n << 20n, KERNEL_IMAGE_SIZE, 2n << 20n), 1, 'no room: the base stays');
  const draws = Array.from({ length: 200 }, () => randomSlot(479));
  assert.ok(draws.every((d) => Number.isInteger(d) && d >= 0 && d < 479));
  assert.ok(new Set(draws).size > 100, 'spread over the slots');
  const stub = relocationStub({ tableEnd: 0x3300000n, delta: 0x2a00000n, kernelEntry: 0x1000000n });
  const file = join(dir, 'stub.bin');
  writeFileSync(file, stub);
  const asm = execFileSync('objdump', ['-D', '-b', 'binary', '-m', 'i386:x86-64', file], { encoding: 'utf8' })
    .split('\n').map((l) => l.split('\t')).filter((f) => f.length >= 3 && /^\s+[0-9a-f]+:$/.test(f[0]!))
    .map((f) => f[2]!.replace(/\s+/g, ' ').trim()); // continuation lines of long instructions have no text
  assert.deepEqual(asm.slice(0, 3), ['movabs $0x3300000,%r8', 'movabs $0x80000000,%r9', 'movabs $0x2a00000,%r10']);
  const patches = asm.filter((l) => /\(%rax\)$/.test(l) && !l.startsWith('movslq'));
  assert.deepEqual(patches, ['add %r10d,(%rax)', 'sub %r10d,(%rax)', 'add %r10,(%rax)']);
  assert.equal(asm.filter((l) => l === 'movslq (%r8),%rax').length, 3);
  assert.deepEqual(asm.slice(-2), ['movabs $0x1000000,%rax', 'jmp *%rax']);
  // Each loop's branches stay inside the stub: the conditional one leaves it for the next loop.
  for (const l of asm.filter((x) => /^(je|jmp) 0x/.test(x))) assert.ok(Number(l.split(' ')[1]) < stub.length, l);
});

test('the Debian bzImage unpacked by tsvirt: placed at 16 MiB, entered through the relocation stub with KASLR', (t) => {
  const k = debianKernelOrSkip(t);
  if (!k) return;
  const unpacked = unpackPayload(bzImagePayload(k.bytes)!);
  const reference = join(dir, 'vmlinux');
  // Debian's own unlz4 over the payload (trailer left off) gives the same bytes.
  const payload = bzImagePayload(k.bytes)!;
  writeFileSync(join(dir, 'payload.lz4'), payload.subarray(0, payload.length - 4));
  execFileSync('unlz4', ['-f', '-q', join(dir, 'payload.lz4'), reference]);
  assert.ok(readFileSync(reference).equals(Buffer.from(unpacked)), 'same bytes as unlz4');

  const memorySize = 256n << 20n;
  const load = (cmdline: string, slot: number): { out: ReturnType<typeof loadLinux>; mem: RegionGuestMemory; slots: number } => {
    const mem = RegionGuestMemory.ofSize(Number(memorySize));
    let slots = 0;
    const out = loadLinux(mem, { kernel: k.bytes, unpackedKernel: unpacked, cmdline, memorySize, kaslrSlot: (n) => { slots = n; return slot; } });
    return { out, mem, slots };
  };
  const elfEntry = new DataView(unpacked.buffer, unpacked.byteOffset).getBigUint64(24, true);
  const loadflags = (mem: RegionGuestMemory): number => mem.slice(ZERO_PAGE_START + 0x211n, 1)[0]!;

  const kaslr = load('console=ttyS0', 5);
  assert.equal(kaslr.out.kind, 'bzImage');
  assert.equal(kaslr.out.kernelStart, 0x1000000n);
  assert.equal(kaslr.out.kaslrOffset, 5n * 0x200000n);
  assert.ok(kaslr.slots > 400, `${kaslr.slots} slots`);
  assert.ok(kaslr.out.entry > 0x1000000n && kaslr.out.entry < kaslr.out.kernelEnd, 'the stub lies in the boot footprint');
  assert.equal(kaslr.out.regs.rip, kaslr.out.entry);
  const stub = relocationStub({ tableEnd: 0n, delta: 5n * 0x200000n, kernelEntry: elfEntry });
  const placedStub = kaslr.mem.slice(kaslr.out.entry, stub.length);
  assert.deepEqual(placedStub.subarray(30), stub.subarray(30), 'the stub, jumping to the ELF entry');
  assert.equal(loadflags(kaslr.mem) & 0x02, 0x02, 'KASLR_FLAG set');
  // The relocation table (what follows the ELF file's section headers) sits on the page after
  // the image, ending where the stub begins (16-byte aligned).
  const dv = new DataView(unpacked.buffer, unpacked.byteOffset);
  const tableStart = Number(dv.getBigUint64(40, true)) + dv.getUint16(58, true) * dv.getUint16(60, true);
  let imageEnd = 0n;
  for (let i = 0; i < dv.getUint16(56, true); i++) {
    const ph = Number(dv.getBigUint64(32, true)) + i * dv.getUint16(54, true);
    if (dv.getUint32(ph, true) === 1) imageEnd = [imageEnd, dv.getBigUint64(ph + 24, true) + dv.getBigUint64(ph + 40, true)].reduce((x, y) => (x > y ? x : y));
  }
  const tableAt = (imageEnd + 4095n) & ~4095n;
  const table = unpacked.subarray(tableStart);
  assert.ok(Buffer.from(kaslr.mem.slice(tableAt, table.length)).equals(Buffer.from(table)), 'the relocation table in guest memory');
  assert.equal(kaslr.out.entry, (tableAt + BigInt(table.length) + 15n) & ~15n);
  // The kernel's text is the ELF's first segment, unrelocated: the guest's stub patches it.
  assert.deepEqual(kaslr.mem.slice(0x1000000n, 4096), unpacked.subarray(0x200000, 0x200000 + 4096));

  const fixed = load('console=ttyS0 nokaslr', 5);
  assert.equal(fixed.out.entry, elfEntry);
  assert.equal(fixed.out.kaslrOffset, undefined);
  assert.equal(loadflags(fixed.mem) & 0x02, 0);

  const slotZero = load('console=ttyS0', 0);
  assert.equal(slotZero.out.entry, elfEntry, 'offset 0 needs no stub');
  assert.equal(slotZero.out.kaslrOffset, 0n);
  assert.equal(loadflags(slotZero.mem) & 0x02, 0x02);
});
