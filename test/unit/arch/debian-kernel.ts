// Finds Debian's cloud kernel (a real bzImage) for the loader tests: the lab's cached copy,
// or our own cache, or else downloads the package once with apt-get into .cache.
import { execFileSync } from 'node:child_process';
import type { TestContext } from 'node:test';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bzImagePayload, unpackPayload } from '../../../src/arch/x86/kernel-payload.js';

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

/** The kernel for a test, or undefined after skipping the test with the reason there is none. */
export function debianKernelOrSkip(t: TestContext): { bytes: Uint8Array; path: string } | undefined {
  const k = debianCloudKernel();
  if (!('reason' in k)) return k;
  t.skip(k.reason);
  return undefined;
}

/** The ELF vmlinux (and its relocation table) inside a bzImage, unpacked as tsvirt does it. */
export function extractVmlinux(bzImage: Uint8Array): Uint8Array {
  const payload = bzImagePayload(bzImage);
  if (!payload) throw new Error('the bzImage header locates no payload');
  return unpackPayload(payload);
}
