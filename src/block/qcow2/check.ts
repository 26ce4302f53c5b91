// placeholder, replaced below
import type { Qcow2Image } from './image.js';
export async function repairOpenImage(_image: Qcow2Image): Promise<void> {}
