// The layout of a vCPU's control block (see vcpu-channel.ts for the protocol) and its run
// states. CommonJS, so that the `tsvirt` launcher and vcpu-threads.cts can use it before the
// ES module loader starts.

/** Desired state, written by the main thread. */
export const CTL_RUN_STATE = 0;
/** 1 while the vCPU thread is parked (not in KVM_RUN), written by the vCPU thread. */
export const CTL_PARKED = 1;
/** Incremented by the vCPU thread for each exit it hands to the main thread. */
export const CTL_EXIT_SEQ = 2;
/** Set to EXIT_SEQ by the main thread when that exit is complete. */
export const CTL_DONE_SEQ = 3;
/** Incremented by the main thread whenever RUN_STATE changes or a command is posted. */
export const CTL_COMMAND_SEQ = 4;
/** Statistics: exits handled on the vCPU thread / handed to the main thread. */
export const CTL_LOCAL_EXITS = 5;
export const CTL_FORWARDED_EXITS = 6;
/** The vCPU thread's Linux thread id (for QMP query-cpus-fast). */
export const CTL_THREAD_ID = 7;
export const CTL_WORDS = 8;

export const RUN = 0;
export const PARK = 1;
export const QUIT = 2;
