// The tsvirt library: import { Machine } from 'tsvirt'.
export * from './memory/guest-memory.js';
export * from './memory/region-memory.js';
