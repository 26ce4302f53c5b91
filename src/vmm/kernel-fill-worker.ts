// The thread that fills a kernel cache entry in the background (kernel-cache.ts,
// fillKernelCacheInBackground): it reads the kernel file itself, unpacks its payload and
// writes the entry, then answers with the payload's error, if it has one.
import { readFileSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { KernelPayloadError } from '../arch/x86/kernel-payload.js';
import { fillKernelCache, type KernelFillRequest, type KernelFillResult } from './kernel-cache.js';

const { path, dir } = workerData as KernelFillRequest;
let result: KernelFillResult = {};
try {
  fillKernelCache(path, new Uint8Array(readFileSync(path)), dir);
} catch (err) {
  if (!(err instanceof KernelPayloadError)) throw err;
  result = { error: err.message };
}
parentPort!.postMessage(result);
