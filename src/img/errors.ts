// Errors of `tsvirt img`: one line for the user, and the exit status qemu-img would use,
// so scripts written against qemu-img keep working.
export class ImgError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
    this.name = 'ImgError';
  }
}

/** A usage error (bad option, missing operand): qemu-img exits 1 for all of them. */
export class UsageError extends ImgError {
  constructor(message: string) {
    super(message, 1);
    this.name = 'UsageError';
  }
}

/** One line describing any thrown value, without a stack. */
export function oneLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.replace(/\s*\n\s*/g, ' ').trim();
}
