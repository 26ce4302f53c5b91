// `tsvirt lab build`: fetches the kernel package and makes the guest image and the lab
// host image under the lab cache. Each step prints a progress line with its duration;
// build-info.json is written last, so a half-finished build never looks complete.
import { copyFileSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildGuestInitrd, GUEST_MODULES, GUEST_OPTIONAL_MODULES } from './guest-image.js';
import { buildHostImage, HOST_MODULES, labLayout, type LabLayout } from './host-image.js';
import { fetchKernel } from './kernel-package.js';
import { resolveModules } from './modules.js';
import { labCacheDir, labFiles } from './paths.js';

export interface BuildInfo {
  kernelRelease: string;
  layout: LabLayout;
  guestModules: string[];
  hostModules: string[];
  builtAt: string;
  seconds: number;
}

export function readBuildInfo(): BuildInfo | null {
  try {
    return JSON.parse(readFileSync(labFiles.buildInfo(), 'utf8')) as BuildInfo;
  } catch {
    return null;
  }
}

export async function buildLab(log: (line: string) => void = (l) => process.stderr.write(`${l}\n`)): Promise<BuildInfo> {
  const started = Date.now();
  const dir = labCacheDir();
  mkdirSync(dir, { recursive: true });
  const layout = labLayout();
  const steps = 4;
  let step = 0;
  let stepStart = Date.now();
  const begin = (what: string): void => {
    step++;
    stepStart = Date.now();
    log(`[lab build ${step}/${steps}] ${what}`);
  };
  const done = (): void => log(`    done in ${((Date.now() - stepStart) / 1000).toFixed(1)} s`);
  const detail = (line: string): void => log(`    ${line}`);

  begin('kernel: Debian cloud kernel package');
  const kernel = fetchKernel(join(dir, 'kernel'), detail);
  const vmlinuzTmp = `${labFiles.kernel()}.${process.pid}.partial`;
  copyFileSync(kernel.vmlinuz, vmlinuzTmp);
  renameSync(vmlinuzTmp, labFiles.kernel());
  detail(`kernel ${kernel.release}, ${(statSync(labFiles.kernel()).size / 1e6).toFixed(1)} MB`);
  done();

  begin('guest image: busybox + virtio modules initramfs');
  const guestModules = resolveModules(kernel.modulesDir, GUEST_MODULES, GUEST_OPTIONAL_MODULES);
  detail(`modules: ${guestModules.map((m) => m.name).join(' ')}`);
  const guestSize = buildGuestInitrd(labFiles.guestInitrd(), kernel.modulesDir, guestModules);
  detail(`guest initrd ${(guestSize / 1e6).toFixed(1)} MB`);
  done();

  begin(`lab host image (${layout} layout)`);
  const hostModules = resolveModules(kernel.modulesDir, HOST_MODULES);
  detail(`modules: ${hostModules.map((m) => m.name).join(' ')}`);
  buildHostImage(dir, kernel.modulesDir, hostModules, layout, detail);
  done();

  begin('recording the build');
  const info: BuildInfo = {
    kernelRelease: kernel.release,
    layout,
    guestModules: guestModules.map((m) => m.name),
    hostModules: hostModules.map((m) => m.name),
    builtAt: new Date().toISOString(),
    seconds: (Date.now() - started) / 1000,
  };
  writeFileSync(`${labFiles.buildInfo()}.${process.pid}.partial`, JSON.stringify(info, null, 2) + '\n');
  renameSync(`${labFiles.buildInfo()}.${process.pid}.partial`, labFiles.buildInfo());
  done();
  log(`lab built in ${info.seconds.toFixed(1)} s under ${dir}`);
  return info;
}
