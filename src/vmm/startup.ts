// What `tsvirt run` needs of the VMM on the main thread, in one module: the build bundles it
// with everything it imports into vmm.bundle.js (scripts/bundle.mjs, bundles.ts), which the
// run command loads instead of some 50 separate modules.
export { ConfigError, loadConfigFile, parseMemoryOption, validateConfig } from './config.js';
export { Machine } from './machine.js';
export { attachFile, attachSocket, attachStdio } from './console.js';
