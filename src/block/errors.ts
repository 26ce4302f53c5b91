// One error type for the whole block layer: every message names the image file and
// says, in one line, what is wrong with it or with the request.

export class BlockError extends Error {
  constructor(
    readonly filename: string,
    readonly reason: string,
  ) {
    super(`${filename}: ${reason}`);
    this.name = 'BlockError';
  }
}
