// Finds Debian's cloud kernel (a real bzImage) for the loader tests: the lab's cached copy,
// or our own cache, or else downloads the package once with apt-get into .cache.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../../..', import.meta.url));
const ownCache = join(root, '.cache', 'arch-kernel');

function vmlinuzIn(bootDir: string): string | undefined {
  if (!existsSync(bootDir)) return undefined;
  const name = readdirSync(bootDir).find((n) => n.startsWith('vmlinuz-'));
  return name ? join(bootDir, name) : undefined;
}

function cachedKernel(): string | undefined {
  const labKernels = join(root, '.cache', 'lab', 'kernel');
  if (existsSync(labKernels)) {
    for (const dir of readdirSync(labKernels)) {
      if (dir.endsWith('.partial')) continue; // still being extracted by the lab
      const found = vmlinuzIn(join(labKernels, dir, 'boot'));
      if (found) return found;
    }
  }
  return vmlinuzIn(join(ownCache, 'extracted', 'boot'));
}

function download(): void {
  mkdirSync(ownCache, { recursive: true });
  const depends = execFileSync('apt-cache', ['depends', 'linux-image-cloud-amd64'], { encoding: 'utf8', timeout: 60_000 });
  const pkg = /Depends: (linux-image-[^\s]+-cloud-amd64)/.exec(depends)?.[1];
  if (!pkg) throw new Error('apt-cache names no linux-image-*-cloud-amd64 package');
  execFileSync('apt-get', ['download', pkg], { cwd: ownCache, timeout: 300_000, stdio: 'ignore' });
  const deb = readdirSync(ownCache).find((n) => n.startsWith(pkg) && n.endsWith('.deb'));
  if (!deb) throw new Error(`apt-get download ${pkg} produced no .deb`);
  execFileSync('dpkg-deb', ['-x', join(ownCache, deb), join(ownCache, 'extracted')], { timeout: 300_000 });
}

/** The bzImage bytes, or a reason why none could be had (the caller reports it, never silently). */
export function debianCloudKernel(): { bytes: Uint8Array; path: string } | { reason: string } {
  let path = cachedKernel();
  if (!path) {
    try {
      download();
    } catch (e) {
      return { reason: `Debian cloud kernel not cached and download failed: ${(e as Error).message.split('\n')[0]}` };
    }
    path = cachedKernel();
  }
  if (!path) return { reason: 'Debian cloud kernel package held no boot/vmlinuz-*' };
  return { bytes: new Uint8Array(readFileSync(path)), path };
}

/**
 * The ELF vmlinux inside a bzImage whose payload is LZ4-compressed (Debian's x86 kernels):
 * the payload is in the LZ4 legacy frame format, blocks of LZ4 sequences.
 */
export function extractVmlinux(bzImage: Uint8Array): Uint8Array {
  const dv = new DataView(bzImage.buffer, bzImage.byteOffset, bzImage.byteLength);
  const setupSize = ((bzImage[0x1f1] || 4) + 1) * 512;
  const payloadOffset = setupSize + dv.getUint32(0x248, true);
  const payloadLength = dv.getUint32(0x24c, true);
  const payload = bzImage.subarray(payloadOffset, payloadOffset + payloadLength);
  const pv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  if (pv.getUint32(0, true) !== 0x184c2102) throw new Error('bzImage payload is not LZ4 legacy-framed');
  // The kernel build appends the decompressed size as a little-endian u32.
  const out = new Uint8Array(pv.getUint32(payload.length - 4, true));
  let o = 0;
  let p = 4;
  while (p + 4 <= payload.length - 4 && o < out.length) {
    const blockSize = pv.getUint32(p, true);
    p += 4;
    if (blockSize === 0x184c2102) continue; // a new legacy frame starts
    const end = p + blockSize;
    while (p < end) {
      const token = payload[p++]!;
      let literals = token >> 4;
      if (literals === 15) { let b; do { b = payload[p++]!; literals += b; } while (b === 255); }
      out.set(payload.subarray(p, p + literals), o);
      o += literals;
      p += literals;
      if (p >= end) break; // the last sequence has literals only
      const offset = payload[p]! | (payload[p + 1]! << 8);
      p += 2;
      let match = token & 15;
      if (match === 15) { let b; do { b = payload[p++]!; match += b; } while (b === 255); }
      match += 4;
      for (let i = 0; i < match; i++, o++) out[o] = out[o - offset]!; // may overlap: byte by byte
    }
  }
  if (o !== out.length) throw new Error(`LZ4 payload decompressed to ${o} bytes, expected ${out.length}`);
  return out;
}
