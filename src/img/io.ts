// Where a subcommand writes: the process's streams normally, buffers in tests of the library API.
export interface ImgIO {
  out(text: string): void;
  err(text: string): void;
  /** True when stderr is a terminal (the progress bar draws only then, unless forced). */
  readonly errIsTTY: boolean;
}

export const processIO: ImgIO = {
  out: (text) => void process.stdout.write(text),
  err: (text) => void process.stderr.write(text),
  errIsTTY: Boolean(process.stderr.isTTY),
};

/** Collects output in memory; used by the library entry point and unit tests. */
export class BufferIO implements ImgIO {
  stdout = '';
  stderr = '';
  readonly errIsTTY = false;
  out(text: string): void {
    this.stdout += text;
  }
  err(text: string): void {
    this.stderr += text;
  }
}
