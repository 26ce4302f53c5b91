// A vCPU thread that takes its time to come up (as one does under nested virtualization,
// where a worker's isolate boots in about half a second): it waits, then runs the real
// vCPU worker. The early-vCPU tests use it to see the guest start on the main thread.
const delayMs = Number(process.env.TSVIRT_TEST_SLOW_WORKER_MS ?? 1500);
await new Promise((resolve) => setTimeout(resolve, delayMs));
await import('../../../../src/vmm/vcpu-worker.js');
