// A BufferIO that also counts the calls of the command line's process-wide hooks, for the
// tests of when convert asks for them.
import { BufferIO } from '../../../src/img/io.js';

export class RecordingIO extends BufferIO {
  bulkCopies = 0;
  writesOnly = 0;
  bulkCopyOnly(): void {
    this.bulkCopies++;
  }
  writesOnlyOnPool(): void {
    this.writesOnly++;
  }
}
