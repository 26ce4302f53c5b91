#!/usr/bin/env node
// The `tsvirt` command. `tsvirt run` and `tsvirt img` go straight to the build's bundle of
// the command, all CommonJS: under nested virtualization Node's ES module loader alone costs
// about a tenth of a second before the first module runs (docs/design.md, boot time), and a
// short `tsvirt img` job is mostly start-up. Everything else, and `run` when its flags need
// commander, goes to the ES module CLI (main.ts), which reads process.argv itself.
type VcpuThreads = typeof import('../vmm/vcpu-threads.cjs');

// A guest's first KVM_RUN waits for its vCPU thread's isolate to boot: for `run`, the
// threads start now, before the run bundle loads (see vcpu-threads.cts). Other commands do
// not load that module (nor worker_threads with it): a short `tsvirt img` job is mostly start-up.
// eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded only for `run`, before the bundle
const vcpuThreads = process.argv[2] === 'run' ? require('../vmm/vcpu-threads.cjs') as VcpuThreads : undefined;
vcpuThreads?.prestartForRunArgs(process.argv.slice(3));

// eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded after the prestart above, on purpose
const { exitCodeFor, imgCommand, runCommand } = require('./bundled-commands.cjs') as typeof import('./bundled-commands.cjs');

const BUNDLED = { run: runCommand, img: imgCommand };

async function launch(argv: string[]): Promise<void> {
  const command = argv[0] === 'run' || argv[0] === 'img' ? BUNDLED[argv[0]] : undefined;
  if (command) {
    let code: number | undefined;
    try {
      code = await command(argv.slice(1));
    } catch (err) {
      code = exitCodeFor(err);
    } finally {
      // Threads no machine took (a bad flag, or commander has the flags next) must not be
      // loading still when the process exits: ended here (nothing to do when a machine ran).
      await vcpuThreads?.stopPrestartedVcpuThreads();
    }
    if (code !== undefined) {
      process.exitCode = code;
      return;
    }
  }
  await import('./main.js');
}

void launch(process.argv.slice(2));
