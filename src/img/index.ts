// Library entry of the image tool: run it in-process, or reuse its pieces.
export { runImg, SUBCOMMANDS } from './main.js';
export { ImgError } from './errors.js';
export { BufferIO, processIO, type ImgIO } from './io.js';
export { parseSize, humanSize } from './size.js';
export { qemuJson } from './qemu-json.js';
