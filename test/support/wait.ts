// Waiting in tests for something another thread or the event loop brings about.

/** Polls `condition` every 5 ms until it holds; fails after `ms`, naming `what`. */
export async function waitFor(what: string, condition: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
