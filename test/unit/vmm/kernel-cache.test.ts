// The kernel cache: a bzImage's payload unpacked once (its entry written in the background),
// read from the cache afterwards, never used once the kernel file changed, and left to the
// guest where the cache cannot be written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  cachedKernelFor, KERNEL_CACHE_ENTRIES, kernelCacheDir, unpackedKernelFor,
} from '../../../src/vmm/kernel-cache.js';
import { bzImagePayload, KernelPayloadError } from '../../../src/arch/x86/kernel-payload.js';
import { type KernelImage, loadLinux } from '../../../src/arch/x86/linux-loader.js';
import { RegionGuestMemory } from '../../../src/memory/region-memory.js';
import { debianKernelOrSkip } from '../arch/debian-kernel.js';

const all = (image: KernelImage): Uint8Array => image.read(0, image.length);

test('the cache directory: TSVIRT_CACHE, else XDG_CACHE_HOME, else ~/.cache', () => {
  assert.equal(kernelCacheDir({ TSVIRT_CACHE: '/c' }), '/c/kernels');
  assert.equal(kernelCacheDir({ XDG_CACHE_HOME: '/x' }), '/x/tsvirt/kernels');
  assert.match(kernelCacheDir({}), /\/\.cache\/tsvirt\/kernels$/);
});

test('a kernel is unpacked once, then read from the cache until its file changes', async (t) => {
  const k = debianKernelOrSkip(t);
  if (!k) return;
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-kcache-'));
  const cache = join(dir, 'cache', 'kernels');
  const kernel = join(dir, 'vmlinuz');
  copyFileSync(k.path, kernel);

  const first = unpackedKernelFor(kernel, k.bytes, cache)!;
  assert.equal(first.fresh, true);
  await first.stored;
  const entries = readdirSync(cache);
  assert.equal(entries.length, 1);
  assert.match(entries[0]!, /^[0-9a-f]+-[0-9a-f]+-[0-9a-f]+-[0-9a-f]+\.vmlinux$/, 'named by device, inode, size and change time');
  // The kernel's zero pages (.bss, its scratch area) are holes in the entry, not stored.
  const stored = statSync(join(cache, entries[0]!));
  assert.equal(stored.size, first.image.length);
  assert.ok(stored.blocks * 512 < stored.size * 0.8, `${stored.blocks * 512} bytes stored for ${stored.size}`);
  const second = unpackedKernelFor(kernel, k.bytes, cache)!;
  assert.equal(second.fresh, false, 'read from the cache');
  assert.equal(second.image.length, first.image.length);
  assert.ok(Buffer.from(all(second.image)).equals(Buffer.from(all(first.image))));
  // Reads into a caller's buffer (guest memory) give the same bytes as the small reads.
  const into = new Uint8Array(5000);
  second.image.copyTo(into, 123_456);
  assert.deepEqual(into, first.image.read(123_456, 5000));
  second.release();
  second.release(); // a second release is harmless

  // Prefetched: the segments are read on the thread pool while the loader runs, and the
  // loader's own copies of them are skipped; once settled, guest memory holds the kernel
  // (the entry's holes left as the memory's zeroes).
  const third = unpackedKernelFor(kernel, k.bytes, cache)!;
  const memorySize = 128n << 20n;
  const mem = RegionGuestMemory.ofSize(Number(memorySize));
  third.prefetch(mem);
  const loaded = loadLinux(mem, { kernel: k.bytes, unpackedKernel: third.image, cmdline: 'nokaslr', memorySize });
  await third.settled();
  third.release();
  const reference = RegionGuestMemory.ofSize(Number(memorySize));
  loadLinux(reference, { kernel: k.bytes, unpackedKernel: first.image, cmdline: 'nokaslr', memorySize });
  const span = Number(loaded.kernelEnd - loaded.kernelStart);
  assert.ok(Buffer.from(mem.slice(loaded.kernelStart, span)).equals(Buffer.from(reference.slice(loaded.kernelStart, span))));

  // The same bytes written again: the change time moved, so the entry is not trusted.
  writeFileSync(kernel, readFileSync(kernel));
  const rewritten = unpackedKernelFor(kernel, k.bytes, cache)!;
  assert.equal(rewritten.fresh, true);
  await rewritten.stored;
  assert.equal(readdirSync(cache).length, 2);

  // An entry cut to half its length (still an ELF header) is unpacked again.
  for (const name of readdirSync(cache)) truncateSync(join(cache, name), first.image.length / 2);
  const halved = unpackedKernelFor(kernel, k.bytes, cache)!;
  assert.equal(halved.fresh, true);
  await halved.stored;
  // A damaged entry (cut short) is not an ELF image: unpacked again.
  for (const name of readdirSync(cache)) truncateSync(join(cache, name), 10);
  const again = unpackedKernelFor(kernel, k.bytes, cache)!;
  assert.equal(again.fresh, true);
  await again.stored;
  assert.ok(Buffer.from(all(again.image)).equals(Buffer.from(all(first.image))));
});

test('the cache keeps the most recently unpacked kernels', async (t) => {
  const k = debianKernelOrSkip(t);
  if (!k) return;
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-kcache-'));
  const cache = join(dir, 'kernels');
  mkdirSync(cache);
  // Older entries of other kernels (their contents do not matter to the pruning).
  for (let i = 0; i < KERNEL_CACHE_ENTRIES + 2; i++) {
    const old = join(cache, `old-${i}.vmlinux`);
    writeFileSync(old, 'x');
    utimesSync(old, 1000 + i, 1000 + i);
  }
  const kernel = join(dir, 'vmlinuz');
  copyFileSync(k.path, kernel);
  const fresh = unpackedKernelFor(kernel, k.bytes, cache)!;
  assert.equal(fresh.fresh, true);
  await fresh.stored;
  const left = readdirSync(cache).sort();
  assert.equal(left.length, KERNEL_CACHE_ENTRIES);
  assert.ok(!left.includes('old-0.vmlinux') && !left.includes('old-1.vmlinux') && !left.includes('old-2.vmlinux'), 'the oldest went');
  assert.ok(left.includes(`old-${KERNEL_CACHE_ENTRIES + 1}.vmlinux`), 'newer ones stay');
  assert.equal(unpackedKernelFor(kernel, k.bytes, cache)!.fresh, false, 'the new entry stays');
});

test('no unpacking where the cache cannot be written, nor for payloads left to the guest', (t) => {
  const k = debianKernelOrSkip(t);
  if (!k) return;
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-kcache-'));
  const kernel = join(dir, 'vmlinuz');
  copyFileSync(k.path, kernel);
  // Inside /proc nothing can be created (and Node's recursive mkdir would never return there).
  assert.equal(unpackedKernelFor(kernel, k.bytes, '/proc/tsvirt-no-cache/kernels'), undefined);
  // A payload whose magic says xz: the guest's decompressor handles it.
  const xz = new Uint8Array(k.bytes);
  bzImagePayload(xz)!.set([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
  assert.equal(unpackedKernelFor(kernel, xz, join(dir, 'cache')), undefined);
});

test('a first boot: unpacked at once, its entry written while it boots; two at once do not collide; a payload that does not decode is the error', async (t) => {
  const k = debianKernelOrSkip(t);
  if (!k) return;
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-kcache-'));
  const cache = join(dir, 'kernels');
  const kernel = join(dir, 'vmlinuz');
  copyFileSync(k.path, kernel);
  assert.equal(cachedKernelFor(kernel, k.bytes, cache), undefined, 'nothing cached yet');
  assert.ok(!existsSync(cache), 'looking does not unpack');
  // Two machines booting the same kernel in one process: each unpacks, both entries land whole.
  const one = unpackedKernelFor(kernel, k.bytes, cache)!;
  const two = unpackedKernelFor(kernel, k.bytes, cache)!;
  assert.ok(one.fresh && two.fresh);
  await Promise.all([one.stored, two.stored]);
  assert.deepEqual(readdirSync(cache).filter((n) => n.endsWith('.tmp')), [], 'no temporary left behind');
  const cached = cachedKernelFor(kernel, k.bytes, cache)!;
  assert.equal(cached.fresh, false);
  assert.ok(Buffer.from(all(cached.image)).equals(Buffer.from(all(one.image))));
  // The entry holds what was unpacked, its holes read back as the zero pages they were.
  const elsewhere = unpackedKernelFor(kernel, k.bytes, join(dir, 'other'))!;
  await elsewhere.stored;
  assert.ok(Buffer.from(all(cached.image)).equals(Buffer.from(all(elsewhere.image))));
  cached.release();

  // The first LZ4 block claims more bytes than the payload holds.
  const broken = join(dir, 'vmlinuz-broken');
  const bytes = new Uint8Array(k.bytes);
  new DataView(bzImagePayload(bytes)!.buffer, bzImagePayload(bytes)!.byteOffset).setUint32(4, 0x7fffffff, true);
  writeFileSync(broken, bytes);
  assert.throws(() => unpackedKernelFor(broken, bytes, cache), (err: Error) => {
    assert.ok(err instanceof KernelPayloadError);
    assert.match(err.message, /^the kernel's lz4 payload unpacked to 0 bytes, its trailer says \d+$/);
    return true;
  });
  assert.equal(cachedKernelFor(broken, bytes, cache), undefined);
  assert.ok(!readdirSync(cache).some((n) => n.endsWith('.tmp')), 'no temporary left behind');
});
